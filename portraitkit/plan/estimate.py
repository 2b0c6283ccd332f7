"""Will a training run fit? Peak GPU memory, peak RAM and time per step, estimated before loading.

Everything here is an *estimate*, and every plan says so. What is computed and what is assumed:

- **Computed exactly**: parameter counts, from the published SD1.5 / SDXL configurations
  (`architectures`, or a base's own config.json) built on PyTorch's `meta` device, which
  allocates nothing; LoRA parameter counts, from adding the adapters `train` adds; bytes per
  dtype; optimizer state (bitsandbytes' 8-bit AdamW keeps 2 bytes per parameter, and 8 for
  tensors under 4096 elements).
- **Computed by running the graph on `meta` tensors** (`tracing`): the peak bytes of live tensors
  and the FLOPs of each phase's graph, autocast and gradient checkpointing included.
- **Assumed**, each listed in `Plan.assumptions`: CUDA context size, caching-allocator overhead,
  the resident size of the Python process before loading.
- **Calibrated on published measurements**, listed in `Plan.calibration`: GPU throughput, from
  SD1.5 inference speeds divided by the traced FLOPs of one such step (`devices`).

This module only estimates; `train` decides from the estimate whether a run may start.
No GPU measurement of portraitkit itself has calibrated these yet: `benchmarks/bench_training.py`
measures the same quantities on real-size models and prints each estimate beside its measurement.
Memory figures are in GiB (2**30 bytes), as nvidia-smi, Colab and PyTorch's messages report them.
"""

from __future__ import annotations

import dataclasses
import math

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.settings import check_at_least, check_resolution
from portraitkit.models import families
from portraitkit.models.architectures import arch_key, architecture
from portraitkit.plan.devices import DEVICES, Device, local_cpu_device, local_cuda_device  # noqa: F401 (re-exported)
from portraitkit.plan.klein import flux2_plan
# the plan's parts, re-exported: `from portraitkit.plan.estimate import PlanConfig` is the public way
from portraitkit.plan.plans import (DEFAULT_VALIDATIONS, SD_SAMPLING_STEPS, SESSION_SECONDS, SESSION_SIZES,  # noqa: F401
                                    TRAINING_SHARE, Plan, PlanConfig, optimizer_state_bytes, rounded,  # noqa: F401
                                    training_slowdown)
from portraitkit.plan.sd import sd_plan
from portraitkit.plan.tracing import component_parameters, meta_component, trace_pass


# Train leaves gradient checkpointing off only where the run then needs at most this share of the
# GPU's memory (on a CPU: of its RAM): the estimate may be off by some percent, and the user's
# other notebooks share the machine.
ROOM_TO_SPARE = 0.8


def _room_to_spare(plan: Plan, device: Device) -> bool:
    """The run fits with room to spare: on the GPU where there is one, else in the machine's RAM."""
    if device.gpu_memory_gb is not None:
        return plan.fits and plan.peak_gpu_mem_gb <= ROOM_TO_SPARE * device.gpu_memory_gb
    return plan.fits and device.host_ram_gb is not None and plan.peak_host_ram_gb <= ROOM_TO_SPARE * device.host_ram_gb


def plan_run(base: str = "sd15", resolution: int | None = None, rank: int = 16, batch_size: int = 1,
             train_text_encoder: bool = False, gpu: str | Device = "t4", steps: int = 1000, optimizer: str = "adamw8bit",
             gradient_checkpointing: bool | None = None, recipe: str = "portraitkit", advise: bool = True,
             dora: bool = False, output_preservation: bool = False, validations: int | None = None, validation_renders: int = 8,
             validation_steps: int | None = None, quantize: str = "auto", targets: str = "attention",
             most_validations: int = DEFAULT_VALIDATIONS) -> Plan:
    """Estimate a run's peak GPU memory, RAM and time; when it does not fit, say the cheapest change
    that does, and when it fits with checkpointing, whether it would also fit (faster) without.

    `gradient_checkpointing=None` plans what `train` chooses by default: off where the run fits the
    GPU (on a CPU: its RAM) with room to spare without it (about a quarter faster per step), on elsewhere.
    `validations=None` plans `most_validations` (train's default for the run's steps), fewer on a
    GPU where they would not fit one session beside the steps.
    """
    device = _device(gpu)
    config = PlanConfig(base=base, resolution=resolution, rank=rank, batch_size=batch_size,
                        train_text_encoder=train_text_encoder, gpu=device.name, steps=steps, optimizer=optimizer,
                        gradient_checkpointing=gradient_checkpointing, recipe=recipe, dora=dora,
                        output_preservation=output_preservation, validations=validations,
                        validation_renders=validation_renders, validation_steps=validation_steps, quantize=quantize,
                        targets=targets)
    # Mistakes in the numbers fail before the base is looked up (a hub id costs a request).
    check_at_least({"rank": config.rank, "batch_size": config.batch_size}, 1)
    check_at_least({"steps": config.steps, "validations": config.validations, "validation_renders": config.validation_renders}, 0)
    check_at_least({"validation_steps": config.validation_steps}, 1)
    check_resolution(config.resolution)
    arch = architecture(base)
    families.named(arch["family"]).check_targets(config.targets)
    if families.named(arch["family"]).denoiser == "transformer":  # not a UNet: its own measures (`plan.klein`)
        sized = config.resolution is None and device.gpu_memory_gb is not None
        if sized:
            config = dataclasses.replace(config, resolution=session_resolution(config, device, arch))
        plan = flux2_plan(config, device, arch)
        plan.sized_resolution = sized
        return _with_figures(_sized_validations(plan, most_validations), advise)
    config = dataclasses.replace(config, validation_steps=config.validation_steps or SD_SAMPLING_STEPS)
    plan = None
    if recipe == "plain":  # the plain loop never checkpoints
        config = dataclasses.replace(config, gradient_checkpointing=False)
    elif gradient_checkpointing is None:  # train's default
        plan = sd_plan(dataclasses.replace(config, gradient_checkpointing=False), device, arch)
        if not _room_to_spare(plan, device):
            plan = None
        config = dataclasses.replace(config, gradient_checkpointing=plan is None)
    plan = _sized_validations(plan or sd_plan(config, device, arch), most_validations)
    if advise and not plan.fits:
        plan.advice = _advice(config, device, plan)
    elif advise and config.gradient_checkpointing and recipe == "portraitkit":
        unchecked = sd_plan(dataclasses.replace(config, gradient_checkpointing=False), device, arch)
        if unchecked.fits:
            budget = device.gpu_memory_gb or device.host_ram_gb
            plan.faster = (f"it also fits without gradient checkpointing (--no-gradient-checkpointing): about "
                           f"{unchecked.seconds_per_step:.2f} s/step instead of {plan.seconds_per_step:.2f}, "
                           f"{unchecked.peak_gpu_mem_gb or unchecked.peak_host_ram_gb:.1f} GiB"
                           + (f" of {budget:.1f}, with little room to spare" if not _room_to_spare(unchecked, device) else ""))
    return _with_figures(plan, advise)


def _with_figures(plan: Plan, advise: bool) -> Plan:
    """A GPU plan made for people (`advise`) carries the published training figures beside this
    planner's; the calibration's own plans (advise=False) do not, or they would plan themselves."""
    if advise and plan.device.gpu_memory_gb is not None:
        plan.training_figures = training_calibration()
    return plan


def _device(gpu: str | Device) -> Device:
    if isinstance(gpu, Device):
        return gpu
    if gpu not in DEVICES:
        raise PortraitkitError(f"unknown --gpu '{gpu}': choose one of {', '.join(DEVICES)}")
    if gpu == "cpu":
        return local_cpu_device()
    return DEVICES[gpu]


def session_resolution(config: PlanConfig, device: Device, arch: dict) -> int:
    """FLUX.2's default training size on `device`: the largest of SESSION_SIZES at which the run's
    steps take at most TRAINING_SHARE of a session (512 px when none does)."""
    for size in SESSION_SIZES:
        trial = dataclasses.replace(config, resolution=size, validations=0)
        if flux2_plan(trial, device, arch).total_seconds <= TRAINING_SHARE * SESSION_SECONDS:
            return size
    return SESSION_SIZES[-1]


def _sized_validations(plan: Plan, most: int) -> Plan:
    """A plan whose validations were left open gets `most` (train's default count for its steps),
    or on a GPU as many of them as fit in the session beside the steps (at least one), with the
    time they take."""
    if plan.config.validations is not None:
        return plan
    per_validation = plan.validation_seconds / DEFAULT_VALIDATIONS  # computed at the default count
    count = most
    if plan.device.gpu_memory_gb is not None and per_validation > 0 and most:
        room = SESSION_SECONDS - plan.total_seconds
        count = max(1, min(most, math.floor(room / per_validation)))
    plan.config = dataclasses.replace(plan.config, validations=count)
    plan.validation_seconds = per_validation * count
    return plan


def training_calibration() -> list[dict]:
    """Each published T4 training figure (`devices.T4_TRAINING_FIGURES`) beside this planner's
    estimate of the same settings, with the estimate's error."""
    from portraitkit.plan.devices import T4_TRAINING_FIGURES

    rows = []
    for figure in T4_TRAINING_FIGURES:
        plan = plan_run(gpu="t4", advise=False, validations=0, **figure["settings"])
        estimate = plan.seconds_per_step
        if figure["vae_every_step"]:  # that script encodes each image with the VAE in every step: as much time again
            arch = architecture(figure["settings"]["base"])
            encode = trace_pass(arch_key(arch), "vae", "encode", 1, plan.resolution, 2, True)["flops"]
            estimate += encode / (plan.device.achieved_tflops() * 1e12) * training_slowdown(plan.device)
        rows.append({**{k: v for k, v in figure.items() if k != "settings"}, "estimated_s_per_step": round(estimate, 2),
                     "error": f"{estimate / figure['published_s_per_step'] - 1:+.0%}"})
    return rows


def plan_sampling(base: str, gpu: str | Device = "t4", resolution: int | None = None, steps: int | None = None,
                  quantize: str = "auto") -> dict:
    """`sample`'s load on `gpu`: the recipe (FLUX.2: the fp16 transformer where it fits the GPU and
    the RAM, else NF4), its peak GPU memory and RAM, one image's time, and `fits`."""
    device = _device(gpu)
    arch = architecture(base)
    if families.named(arch["family"]).quantizable:  # FLUX.2: the fp16 or the NF4 transformer
        plan = flux2_plan(PlanConfig(base=base, resolution=resolution, gpu=device.name, validations=0, validation_steps=steps,
                                      quantize=quantize), device, arch)
        if quantize == "auto" and device.gpu_memory_gb is not None and not _sampling_fits(plan.inference, device):
            plan = flux2_plan(dataclasses.replace(plan.config, quantize="nf4"), device, arch)
        inference = dict(plan.inference)
    else:
        inference = dict(sd_plan(PlanConfig(base=base, resolution=resolution, gpu=device.name, validations=0,
                                              validation_steps=steps), device, arch).inference)
    inference.update(device=device.name, gpu_budget_gb=device.gpu_memory_gb, host_budget_gb=rounded(device.host_ram_gb),
                     fits=_sampling_fits(inference, device))
    return inference


def _sampling_fits(inference: dict, device: Device) -> bool:
    return ((inference["peak_gpu_mem_gb"] is None or inference["peak_gpu_mem_gb"] <= device.gpu_memory_gb)
            and (device.host_ram_gb is None or inference["peak_host_ram_gb"] <= device.host_ram_gb))


# --- advice -------------------------------------------------------------------------------------


def _advice(config: PlanConfig, device: Device, plan: Plan) -> str:
    """The first change, from least to most costly in quality or time, that makes the run fit."""
    changes = []
    if not config.gradient_checkpointing:
        changes.append(("turn gradient checkpointing on (--gradient-checkpointing; about a third more compute per step)",
                        {"gradient_checkpointing": True}))
    if config.optimizer != "adamw8bit":
        changes.append(("use 8-bit AdamW (--optimizer adamw8bit)", {"optimizer": "adamw8bit"}))
    if config.recipe == "plain":
        changes.append(("use portraitkit's recipe (cached latents and text, fp16 weights)", {"recipe": "portraitkit"}))
    if config.batch_size > 1:
        changes.append((f"use --batch-size 1 --grad-accum {config.batch_size} (the same effective batch, slower)",
                        {"batch_size": 1}))
    if config.train_text_encoder:
        changes.append(("train the UNet only (leave out --train-text-encoder)", {"train_text_encoder": False}))
    for rank in (8, 4):
        if config.rank > rank:
            changes.append((f"use --rank {rank}", {"rank": rank}))
    for resolution in (896, 768, 640, 512, 448, 384):
        if resolution < plan.resolution:
            changes.append((f"train at --resolution {resolution} (less detail)", {"resolution": resolution}))
    if smaller := families.named(plan.family).smaller_base:
        changes.append((f"use the {smaller} base (--base {smaller}) at its own size", {"base": smaller, "resolution": None}))

    def fits(settings: dict) -> bool:
        trial = dataclasses.replace(config, **settings)
        return sd_plan(trial, device, architecture(trial.base)).fits

    for text, settings in changes:  # one change alone
        if fits(settings):
            return text
    chosen = []
    for text, settings in changes:  # then the cheap ones together (a later resolution or rank replaces an earlier one)
        chosen = [(t, s) for t, s in chosen if not set(s) <= set(settings)] + [(text, settings)]
        combined = {key: value for _, s in chosen for key, value in s.items()}
        if fits(combined):
            return "; ".join(t for t, _ in chosen)
    what = "GPU memory" if plan.fits_gpu is False else "RAM"
    return f"no change of settings makes it fit in this machine's {what}: use a machine with more {what}"


def parameter_counts(base: str = "sd15") -> dict:
    """Exact parameter counts of a base's components, from its architecture on the meta device."""
    return dict(component_parameters(arch_key(architecture(base))))


def lora_parameter_count(base: str = "sd15", rank: int = 4, dora: bool = False, targets: str = "attention") -> int:
    """Trainable parameters of the denoiser's LoRA that `train` adds: in SD's UNet every Linear named
    to_q, to_k, to_v or to_out.0, in FLUX.2's transformer the attention projections
    (`klein.lora_targets`); each gets A (rank x in) and B (out x rank), and with DoRA a magnitude (out)."""
    import torch

    from portraitkit.models import klein
    from portraitkit.models.families.sd import UNET_TARGETS

    arch = architecture(base)
    family = families.named(arch["family"])
    family.check_targets(targets)
    denoiser = meta_component(arch_key(arch), family.denoiser, 2)
    if family.denoiser == "transformer":
        names = set(klein.lora_targets(denoiser, targets))
        adapted = [m for name, m in denoiser.named_modules() if name in names]
    else:
        adapted = [m for name, m in denoiser.named_modules()
                   if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in UNET_TARGETS)]
    return sum(rank * (m.in_features + m.out_features) + dora * m.out_features for m in adapted)


def cpu_checkpointing(config) -> bool:
    """Whether `train` on this CPU uses gradient checkpointing by default: off where the run fits
    this machine's available RAM with room to spare without it (steps about a quarter faster)."""
    from portraitkit.models.bases import TINY_PRESETS

    if config.base in TINY_PRESETS:  # a few MB of weights: tracing them (seconds) would cost more than it saves
        return False
    try:
        return plan_for_training(config, local_cpu_device()).config.gradient_checkpointing
    except PortraitkitError:
        raise
    except Exception as error:  # a planner failure never blocks training: the memory-safe choice
        print(f"portraitkit: could not estimate memory ({type(error).__name__}: {error}); gradient checkpointing on.")
        return True


def plan_for_training(config, device: str | Device | None = None) -> Plan:
    """The plan of a `TrainConfig` on `device` (a Device or a name, "t4"; default: this machine's
    GPU), with train's mixed precision on a GPU (fp16 or bf16 weights: the same bytes)."""
    device = _device(device) if device is not None else local_cuda_device()
    # prior preservation puts a class image beside each training image in the UNet's batch
    batch = config.batch_size * (2 if config.class_dir else 1)
    plan = plan_run(base=config.base, resolution=config.resolution, rank=config.rank, batch_size=batch,
                    train_text_encoder=config.train_text_encoder, gpu=device, steps=config.steps,
                    optimizer=config.optimizer, gradient_checkpointing=config.gradient_checkpointing, advise=False,
                    dora=getattr(config, "dora", False), output_preservation=getattr(config, "output_preservation", False),
                    # the trainer decides which steps it validates and what it draws there; the planner counts them
                    # left open (--validate-every unset), the plan sizes them to the session as train then does
                    validations=(None if getattr(config, "validate_every", 0) is None and config.validating
                                 else len(config.validated_steps())) if hasattr(config, "validated_steps") else 0,
                    most_validations=len(config.validated_steps()) if hasattr(config, "validated_steps") else 0,
                    validation_renders=len(getattr(config, "validation_styles", ())) * len(getattr(config, "validation_seeds", ())),
                    validation_steps=getattr(config, "validation_steps", None), quantize=getattr(config, "quantize", "auto"),
                    targets=getattr(config, "targets", "attention"))
    if not plan.fits:
        plan.advice = _advice(plan.config, device, plan)
    return plan
