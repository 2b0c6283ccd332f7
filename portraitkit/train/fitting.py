"""Will a training run fit this machine and one session? Asked of the planner (`plan.estimate`)
on a GPU before minutes of loading: whether it fits at all (and with gradient checkpointing or
without), which recipe FLUX.2's transformer loads with, and the defaults the user left open,
sized to a Colab session."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.models import families
from portraitkit.plan import estimate as planner
from portraitkit.train.config import TrainConfig


def session_defaults(config: TrainConfig, estimate) -> TrainConfig:
    """What the user left open, as the plan sized it for one Colab session (`estimate.SESSION_SECONDS`):
    FLUX.2's training size, and how often validation renders. A resumed run keeps the size it had."""
    from portraitkit.train.run_folder import read_run_config

    if estimate is None:
        return config
    changes = {}
    saved = Path(config.out_dir) / "config.json"
    if config.resolution is None and estimate.sized_resolution:
        previous = read_run_config(Path(config.out_dir))["settings"].get("resolution") if config.resume and saved.is_file() else None
        changes["resolution"] = previous or estimate.resolution
    if config.validate_every is None and config.validating and estimate.config.validations < len(config.validated_steps()):
        changes["validate_every"] = math.ceil(config.steps / max(1, estimate.config.validations))
    if changes:
        said = ([f"{changes['resolution']} px"] if "resolution" in changes else []) + (
            [f"validation every {changes['validate_every']} steps"] if "validate_every" in changes else [])
        print(f"On this {estimate.device.name}: {' and '.join(said)}, so that training and validation fit a "
              f"{planner.SESSION_SECONDS // 3600} h session (--resolution and --validate-every choose otherwise).")
    return dataclasses.replace(config, **changes)


def check_training_fits(config, device_index: int = 0, processes_here: int = 1) -> tuple:
    """Stop a GPU run that will not fit, before minutes of loading end in an out-of-memory crash,
    and return whether the run uses gradient checkpointing (decided here when it is left to us),
    with the estimate (None when there is none).

    A planner failure never blocks training: it prints a warning and the run goes on, with
    checkpointing unless the user turned it off. Setting PORTRAITKIT_SKIP_PLAN=1 skips the check
    (the estimate may be wrong for an unusual setup).
    """
    safe_choice = config.gradient_checkpointing is not False
    if os.environ.get("PORTRAITKIT_SKIP_PLAN") == "1":
        return safe_choice, None
    if config.mixed_precision == "no":  # the planner knows half-precision GPU runs only
        print("portraitkit: memory is estimated for fp16/bf16 runs, not --mixed-precision no; training without a check.")
        return safe_choice, None
    try:
        estimate = planner.plan_for_training(config, planner.local_cuda_device(device_index, processes_here))
    except PortraitkitError:
        raise
    except Exception as error:  # a bug or an unusual base must not stop a run that may well fit
        print(f"portraitkit: could not estimate memory ({type(error).__name__}: {error}); training anyway.")
        return safe_choice, None
    if estimate.fits:
        where = f"{estimate.peak_gpu_mem_gb:.1f} GiB of GPU memory, " if estimate.peak_gpu_mem_gb is not None else ""
        chosen = "" if config.gradient_checkpointing is not None else (
            "; gradient checkpointing on, as it would not fit with room to spare without" if estimate.config.gradient_checkpointing
            else "; gradient checkpointing off: it fits with room to spare without, and steps are faster")
        print(f"Estimated peak: {where}{estimate.peak_host_ram_gb:.1f} GiB of RAM; it fits this {estimate.device.name}{chosen}.")
        validating = (f", plus about {estimate.validation_seconds / 60:.0f} min for {estimate.config.validations} validations"
                      if estimate.config.validations else "")
        print(f"Estimated time: about {estimate.total_seconds / 60:.0f} min for {config.steps} steps{validating} "
              "(an estimate, before loading and caching; measured figures replace it when a GPU run records them).")
        return estimate.config.gradient_checkpointing, estimate
    needs = (f"about {estimate.peak_gpu_mem_gb:.1f} GiB of GPU memory and this {estimate.device.name} has {estimate.device.gpu_memory_gb} GiB"
             if estimate.fits_gpu is False else
             f"about {estimate.peak_host_ram_gb:.1f} GiB of RAM and this machine has {estimate.device.host_ram_gb:.1f} GiB")
    raise PortraitkitError(f"this run would need {needs} (an estimate): {estimate.advice}; "
                           "or set PORTRAITKIT_SKIP_PLAN=1 to try anyway")


def quantize_transformer(config: TrainConfig, family: str, gpu: bool, device=None) -> bool:
    """Whether a FLUX.2 run loads its frozen transformer in 4-bit NF4: --quantize nf4, or with auto
    where the planner finds the fp16 recipe does not fit this GPU (`device`, default the local one)
    or the RAM, as on a free T4. Never on a CPU (bitsandbytes' 4-bit layers need CUDA) nor for SD;
    a planner failure chooses NF4, the choice that fits."""
    if not families.named(family).quantizable or not gpu or config.quantize == "none":
        return False
    if config.quantize == "nf4":
        return True
    try:
        return planner.plan_for_training(config, device or planner.local_cuda_device()).config.quantize == "nf4"
    except Exception as error:  # a planner failure must not stop a run: the memory-safe recipe
        print(f"portraitkit: could not estimate memory ({type(error).__name__}: {error}); transformer in NF4.")
        return True
