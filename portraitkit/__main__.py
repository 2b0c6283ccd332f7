import gc
import sys

from portraitkit.cli import main

# A command imports torch, diffusers and transformers: millions of objects that live as long as the
# process. At Python's default thresholds (700, 10, 10) the collector walked all of them again and
# again while they were imported: 1,760 collections, 9 of them full, 2.0 s of a 19 s `demo`. Young
# collections every 10,000 new objects instead: about 120, none full, 0.7 s. Only for a process
# that is the command line; a notebook that calls `cli.main` keeps its own settings.
gc.set_threshold(10_000, 10, 10)

sys.exit(main())
