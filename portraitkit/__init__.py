"""portraitkit: from a handful of casual selfies to portraits that look like you on a good day.

Stages (each a module, each reading and writing a documented folder):
prep -> train -> sample -> rank, plus the teaching modules lens and diagnose.
Heavy libraries (torch, diffusers, dlib) are imported inside the functions that need them,
so `import portraitkit` and `portraitkit --help` stay fast.
"""

__version__ = "0.1.0"

from portraitkit.core.offline import keep_bitsandbytes_local as _keep_bitsandbytes_local

# Before anything imports diffusers (which imports bitsandbytes): no kernel fetched from the Hub
# at import, no look-up of huggingface.co (`core.offline`).
_keep_bitsandbytes_local()
