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


# One size rule for every stage (prep, plan, train, sample): diffusers' pipelines need sides that
# are a multiple of 8 (the VAE's downsampling), and below 64 px the latents are smaller than the
# UNet's deepest level (8x8 at 64 px); above 2048 px no base here was trained and memory explodes.
MIN_RESOLUTION, MAX_RESOLUTION = 64, 2048


def check_resolution(resolution: int | None) -> None:
    """Raise one sentence naming the fix when `resolution` (pixels; None = the base's own) is unusable."""
    from portraitkit.core.errors import PortraitkitError

    if resolution is None:
        return
    if not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution % 8 == 0):
        raise PortraitkitError(
            f"--resolution {resolution} is not usable: choose a multiple of 8 between {MIN_RESOLUTION} and {MAX_RESOLUTION} "
            "(512 for SD 1.5, 1024 for SDXL)"
        )


def check_at_least(values: dict[str, float | int | None], minimum: float | int) -> None:
    """Raise for the first setting below `minimum` (None = left to the stage, allowed), named as its flag."""
    from portraitkit.core.errors import PortraitkitError

    check_finite(values)
    for name, value in values.items():
        if value is not None and value < minimum:
            raise PortraitkitError(f"--{name.replace('_', '-')} must be at least {minimum:g}, got {value:g}")


def check_finite(values: dict[str, float | int | None]) -> None:
    """Raise for the first setting that is not a number (nan) or is infinite, named as its flag:
    nan passes every comparison, and would reach the model as a NaN image blamed on something else."""
    import math

    from portraitkit.core.errors import PortraitkitError

    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise PortraitkitError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def check_positive(values: dict[str, float | int | None]) -> None:
    """Raise for the first setting that is zero or negative (None = left to the stage, allowed)."""
    from portraitkit.core.errors import PortraitkitError

    check_finite(values)
    for name, value in values.items():
        if value is not None and not value > 0:
            raise PortraitkitError(f"--{name.replace('_', '-')} must be above 0, got {value:g}")
