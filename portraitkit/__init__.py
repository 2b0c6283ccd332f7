"""portraitkit: from a handful of casual selfies to portraits that look like you on a good day.

Stages (each a module, each reading and writing a documented folder):
prep -> train -> sample -> rank, plus the teaching modules lens and diagnose.
Heavy libraries (torch, diffusers, dlib) are imported inside the functions that need them,
so `import portraitkit` and `portraitkit --help` stay fast.
"""

__version__ = "0.1.0"
