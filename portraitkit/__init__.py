"""portraitkit: from a handful of casual selfies to portraits that look like you on a good day.

Stages (each a module, each reading and writing a documented folder):
prep -> train -> sample -> rank, plus the teaching modules lens and diagnose.
Heavy libraries (torch, diffusers, dlib) are imported inside the functions that need them,
so `import portraitkit` and `portraitkit --help` stay fast.
"""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes warns on CPUs with AVX512-BF16 that its optional 4-bit CPU kernel (fetched from a
# model hub by the `kernels` package) is missing. portraitkit never runs 4-bit layers, and the
# advice would send offline users to a download, so that one logger is kept quiet.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
