"""The one exception type users see: a problem they can fix, said in one clear sentence."""


class PortraitkitError(Exception):
    """Bad input, a missing model, a run that will not fit: the message says what to do.

    The command line prints it without a traceback; notebooks show it as it is.
    """
