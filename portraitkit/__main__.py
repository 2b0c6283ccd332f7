import sys

from portraitkit.cli import main
from portraitkit.core.process import as_a_command

as_a_command()  # a notebook that calls `cli.main` keeps its own settings
sys.exit(main())
