"""The one exception type users see: a problem they can fix, said in one clear sentence."""


class PortraitkitError(Exception):
    """Bad input, a missing model, a run that will not fit: the message says what to do.

    The command line prints it without a traceback; notebooks show it as it is.
    """


class DiskFull(PortraitkitError):
    """A write met a full disk or a quota (Colab's Drive, a small SD card): said once, with where
    and how much, and nothing half-written left behind (`core.files.writing`)."""
