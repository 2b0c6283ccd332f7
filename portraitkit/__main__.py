import sys

from portraitkit.cli import main

sys.exit(main())
