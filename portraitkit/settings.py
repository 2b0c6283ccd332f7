"""Settings dataclasses: every field carries its own help text.

The stages configure themselves with dataclasses (`TrainConfig`, `SampleConfig`, `PlanConfig`,
`DemoConfig`); `cli.add_dataclass_arguments` turns each field into a command-line flag, so a
field's help written here is the `--help` a user reads, and the docs live next to the default.
"""

from __future__ import annotations

import dataclasses


def setting(help_text: str, default=dataclasses.MISSING, choices=None):
    """A dataclass field with its help (and allowed values, where they are few)."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})
