"""The `portraitkit` command line: a thin layer over the stage functions.

Each subcommand is one small `add_<name>(subparsers)` function that declares its arguments
and sets `func`, a function taking the parsed arguments and returning an exit status.
Heavy imports happen inside those functions so that `portraitkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from portraitkit.errors import PortraitkitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portraitkit",
        description="Casual selfies in, flattering true-to-life portraits out.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


# --- subcommands -----------------------------------------------------------------------------
# (each stage adds its own function here and lists it in COMMANDS below)


COMMANDS: list = []


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except PortraitkitError as error:
        print(f"portraitkit {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"portraitkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
