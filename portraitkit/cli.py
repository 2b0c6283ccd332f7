"""The `portraitkit` command line: a thin layer over the stage functions.

Each subcommand is one small `add_<name>(subparsers)` function that declares its arguments
and sets `func`, a function taking the parsed arguments and returning an exit status.
Heavy imports happen inside those functions so that `portraitkit --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

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


def add_dataclass_arguments(parser, config_class, positional=(), renames=None, skip=()) -> None:
    """One option per dataclass field, help text from the field's metadata, so a stage's
    settings are declared once, beside the code they configure."""
    renames = renames or {}
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        kind, optional = _field_kind(hints[f.name])
        help_text = f.metadata.get("help", "").replace("%", "%%")
        if f.name in positional:
            parser.add_argument(f.name, type=kind, help=help_text)
            continue
        flag = "--" + renames.get(f.name, f.name.replace("_", "-"))
        default = None if f.default is dataclasses.MISSING else f.default
        if kind is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(flag, dest=f.name, action=action, default=default, help=help_text)
        elif kind in (list, tuple):
            item = typing.get_args(hints[f.name])
            item_type = next((t for t in typing.get_args(item[0]) or item if t in (int, float, str)), str)
            parser.add_argument(flag, dest=f.name, nargs="+", type=item_type, default=default, help=help_text)
        else:
            convert = _none_or(kind) if optional else kind
            shown = f" (default: {default})" if default is not None else ""
            parser.add_argument(flag, dest=f.name, type=convert, default=default, choices=f.metadata.get("choices"), required=f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, help=help_text + shown)


def _field_kind(hint) -> tuple[type, bool]:
    """(basic type, accepts None) of a field's annotation such as `float | None`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        return (typing.get_origin(inner) or inner), True
    return (typing.get_origin(hint) or hint), False


def _none_or(kind):
    def convert(text: str):
        return None if text.lower() == "none" else kind(text)

    convert.__name__ = kind.__name__
    return convert


def config_from_args(config_class, args):
    names = {f.name for f in dataclasses.fields(config_class)}
    return config_class(**{k: v for k, v in vars(args).items() if k in names})


# --- subcommands -----------------------------------------------------------------------------
# (each stage adds its own function here and lists it in COMMANDS below)


def add_train(subparsers) -> None:
    from portraitkit.train import TrainConfig

    parser = subparsers.add_parser("train", help="train a LoRA of the person on a prepared dataset",
                                   description="Train a LoRA on a dataset made by `portraitkit prep`.")
    add_dataclass_arguments(parser, TrainConfig, positional=("dataset_dir",), renames={"out_dir": "out"})
    parser.set_defaults(func=run_train)


def run_train(args) -> int:
    from portraitkit.train import TrainConfig, train

    run_dir = train(config_from_args(TrainConfig, args))
    print(f"LoRA saved in {run_dir}")
    return 0


COMMANDS: list = [add_train]


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
