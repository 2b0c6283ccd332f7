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
from dataclasses import dataclass, field

from portraitkit.models import lora
from portraitkit.models.architectures import arch_key, architecture
from portraitkit.plan.devices import DEVICES, Device, local_cpu_device, local_cuda_device
from portraitkit.core.errors import PortraitkitError
from portraitkit.core.settings import check_at_least, check_resolution, setting
from portraitkit.plan.tracing import GIB, component_parameters, meta_component, text_encoder_step, trace_pass, training_step

CAPTIONS_ENCODED_AT_ONCE = 20  # train encodes all captions in one batch; 10-20 selfies is the course's range

# Assumptions, each to be replaced by the benchmark's measurements (see docs/benchmarks.md).
CUDA_CONTEXT_GB = 0.5  # CUDA context, cuBLAS/cuDNN handles: outside PyTorch's allocator
ALLOCATOR_OVERHEAD = 0.10  # reserved / allocated - 1 in PyTorch's caching allocator
HOST_BASELINE_GB = 0.5  # Python with torch, diffusers, transformers, peft imported (measured on a CPU machine)
HOST_CUDA_GB = 1.0  # extra host RAM once CUDA libraries are loaded
# On a CPU, RAM holds more than the live tensors: glibc keeps freed heap, oneDNN keeps scratch buffers.
# Measured on a 2-core machine: a real fp32 SD1.5 training step at 512 px had 0.43 GiB of live tensors
# at its peak (the meta trace predicts it to 0.1%) while the process grew by 1.54 GiB; whole real-size
# runs held 1.7-2.0 GiB more than their live tensors. So: the extra grows like that step's, up to a cap.
CPU_EXTRA_RATIO = (1.54 - 0.43) / 0.43
CPU_EXTRA_CAP_GB = 1.8
# A training step's extra grows without that cap with the memory its forward pass allocates (all of
# it again in the recomputation when checkpointing): measured real steps grew 1.10 GiB (SD1.5, 512 px),
# 1.87 (SDXL, 512) and 6.05 (SDXL, 1024) beyond their live tensors, where that forward allocates 1.54,
# 2.67 and 10.5 GiB, the step's traced peak without checkpointing (benchmarks/results/cpu-2026-12-01-trace*.json;
# fitted on the two SDXL steps, SD1.5's is predicted 15% high). The later phases keep that memory:
# a real-size SDXL run at 1024 px needed more than 23 GiB (killed under that cap) although no phase
# alone comes near (its VAE decode: 3.00 GiB of tensors, the process grew 3.95).
CPU_STEP_EXTRA_GB = 0.45
CPU_STEP_EXTRA_PER_GB = 0.53
ASSUMPTIONS = [
    f"CUDA context and library handles take {CUDA_CONTEXT_GB} GiB outside PyTorch's allocator (T4 out-of-memory "
    "reports show total capacity - free - reserved of 0.1-0.65 GiB)",
    f"PyTorch's caching allocator reserves {ALLOCATOR_OVERHEAD:.0%} more than it allocates (reserved exceeded "
    "allocated by 1-16% in most T4 out-of-memory reports)",
    f"the process holds {HOST_BASELINE_GB} GiB of RAM before loading (measured: torch, diffusers, transformers, "
    f"peft imported, on a CPU machine) plus {HOST_CUDA_GB} GiB once CUDA is loaded (assumed)",
    "loading holds each weight once in RAM, no second copy (measured for the fp16 loading of real-size SD1.5 and "
    "SDXL on a CPU machine: within 0.6%, benchmarks/results/cpu-2026-12-01-load.json)",
    "seconds per step = traced FLOPs / achieved throughput of SD1.5 inference on that GPU; kernels for the "
    "backward pass run as efficiently as the forward ones; loading and caching are not included",
    "validation: each validated step renders its images at inference speed (the same throughput); scoring them "
    "(face detection, a second or less per image on a CPU) is not included",
    "cuDNN convolution workspaces are not counted",
    f"on a CPU, RAM holds more than the live tensors (glibc and oneDNN keep freed memory): up to {CPU_EXTRA_CAP_GB} "
    f"GiB, and in a training step {CPU_STEP_EXTRA_GB} GiB plus {CPU_STEP_EXTRA_PER_GB:.0%} of what its forward pass "
    "allocates if that is more (calibrated on real-size SD1.5 and SDXL on a 2-core CPU machine)",
]


# --- planning settings --------------------------------------------------------------------------


@dataclass
class PlanConfig:
    """A training run to plan; each field's help is also its `portraitkit plan` help."""

    base: str = setting("base model: sd15, sdxl, klein4b, tiny-sd, tiny-sdxl, tiny-klein, a Hugging Face id or a diffusers folder",
                        "sd15")
    resolution: int | None = setting("training size in pixels; default: the base's own (512 SD1.5, 1024 SDXL)", None)
    rank: int = setting("LoRA rank", 16)
    dora: bool = setting("DoRA adapters (a magnitude per output row beside each LoRA)", False)
    batch_size: int = setting("images per micro-batch", 1)
    train_text_encoder: bool = setting("also train LoRA on the text encoder(s)", False)
    gpu: str = setting("where it runs: t4 (free Colab), l4, a100, or cpu", "t4", choices=tuple(DEVICES))
    steps: int = setting("optimizer steps, for the total time", 1000)
    optimizer: str = setting("adamw8bit or adamw", "adamw8bit", choices=("adamw8bit", "adamw"))
    gradient_checkpointing: bool | None = setting(
        "recompute activations in the backward pass (far less memory, about a third more compute per step); "
        "default: as train chooses, off only where the run fits the GPU with room to spare without it", None)
    recipe: str = setting("portraitkit (cached latents and text, fp16 weights) or plain (fp32 weights under autocast, "
                        "VAE and text encoders every step, no checkpointing, 32-bit AdamW)", "portraitkit",
                        choices=("portraitkit", "plain"))
    output_preservation: bool = setting("output preservation: the class caption through the UNet with the LoRA (with "
                                        "gradients) and without it, every step", False)
    validations: int | None = setting("validated steps in the run; default: train's (every tenth of the run, at least 50 steps "
                                      "apart), fewer on a GPU where training and validation would not fit one session", None)
    validation_renders: int = setting("images per validated step (train's default: 2 styles x 4 seeds)", 8)
    validation_steps: int | None = setting("denoising steps per validation image; default: the styles' own (30 for SD, 50 for "
                                           "FLUX.2 [klein]), as train draws them", None)
    targets: str = setting("FLUX.2 bases: the layers that learn, attention or attention+mlp", "attention",
                           choices=("attention", "attention+mlp"))
    quantize: str = setting("FLUX.2 bases on a GPU: the frozen transformer in fp16 (none), in 4-bit NF4 (nf4), or auto: "
                            "fp16 where it fits the GPU and the RAM, else NF4", "auto", choices=("auto", "none", "nf4"))


@dataclass(frozen=True)
class Recipe:
    """How a run spends memory: the knobs that change the estimate."""

    weight_bytes: int  # frozen weights: 2 (fp16 / bf16) or 4 (fp32)
    autocast: bool  # fp16 autocast around the models (accelerate's mixed precision)
    checkpointing: bool
    optimizer: str
    cached: bool  # latents and text embeddings computed once (portraitkit) or every step (plain)


def recipe_for(config: PlanConfig, device: Device) -> Recipe:
    if config.recipe == "plain":
        return Recipe(4, device.gpu_memory_gb is not None, False, "adamw", cached=False)
    if device.gpu_memory_gb is None:  # train on a CPU: fp32, no autocast (train's "auto" precision)
        return Recipe(4, False, config.gradient_checkpointing, config.optimizer, cached=True)
    return Recipe(2, True, config.gradient_checkpointing, config.optimizer, cached=True)


# --- the plan -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """Estimated peak memory and time of a training run. `to_dict()` is the `plan --json` output."""

    config: PlanConfig
    family: str
    architecture_source: str
    resolution: int
    device: Device
    peak_gpu_mem_gb: float | None  # what the GPU must hold: reserved + CUDA context
    peak_gpu_allocated_gb: float | None  # what torch.cuda.max_memory_allocated would report
    peak_gpu_reserved_gb: float | None  # what torch.cuda.max_memory_reserved would report
    peak_host_ram_gb: float
    seconds_per_step: float
    phases_gb: dict  # allocated GiB at the peak of each phase of the run
    breakdown_gb: dict  # weights, LoRA, optimizer state, activations
    parameters: dict  # exact parameter counts
    flops_per_step: float
    inference: dict  # `sample`'s load and one image at the validation's steps, on the same machine
    validation_seconds: float  # every validated step's renders, on top of the steps' time
    fits_gpu: bool | None
    fits_host: bool | None
    advice: str | None = None
    faster: str | None = None  # a speed-up that still fits, when there is one
    assumptions: list = field(default_factory=lambda: list(ASSUMPTIONS))

    @property
    def fits(self) -> bool:
        return self.fits_gpu is not False and self.fits_host is not False

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_step * self.config.steps  # the steps alone; validation_seconds come on top

    def to_dict(self) -> dict:
        device = self.device
        return {
            "estimate": True,
            "method": "weights and optimizer state counted exactly from the architecture; activations traced on "
                      "the meta device; time from traced FLOPs and published throughput; see calibration and assumptions",
            "units": "GiB (2**30 bytes)",
            **dataclasses.asdict(self.config),
            "resolution": self.resolution,
            "family": self.family,
            "architecture_source": self.architecture_source,
            "peak_gpu_mem_gb": _round(self.peak_gpu_mem_gb),
            "peak_gpu_allocated_gb": _round(self.peak_gpu_allocated_gb),
            "peak_gpu_reserved_gb": _round(self.peak_gpu_reserved_gb),
            "peak_host_ram_gb": _round(self.peak_host_ram_gb),
            "seconds_per_step": round(self.seconds_per_step, 3),
            "validation_seconds": round(self.validation_seconds),
            "total_seconds": round(self.total_seconds),
            "total_includes_validation": False,
            "session": self.session(),
            "fits": self.fits,
            "fits_gpu": self.fits_gpu,
            "fits_host": self.fits_host,
            "gpu_budget_gb": device.gpu_memory_gb,
            "host_budget_gb": _round(device.host_ram_gb),
            "advice": self.advice,
            "faster": self.faster,
            "phases_gb": {k: _round(v) for k, v in self.phases_gb.items()},
            "breakdown_gb": {k: _round(v) for k, v in self.breakdown_gb.items()},
            "parameters": self.parameters,
            "flops_per_step": self.flops_per_step,
            "inference": self.inference,
            "calibration": {
                "device": device.name,
                "achieved_tflops": round(device.achieved_tflops(), 2),
                "source": device.source,
                "gpu_measurements_of_portraitkit": "none yet: run benchmarks/gpu_check.sh on a GPU",
                "training": self.training_calibration(),
            },
            "assumptions": self.assumptions,
        }

    def session(self) -> dict | None:
        """On a GPU: the run's steps and validation against one Colab session's budget."""
        if self.device.gpu_memory_gb is None:
            return None
        whole = self.total_seconds + self.validation_seconds
        return {"budget_seconds": SESSION_SECONDS, "seconds": round(whole), "within": whole <= SESSION_SECONDS,
                "rule": f"defaults left open are sized so that a run fits {SESSION_SECONDS // 3600} h: FLUX.2's size is the "
                        f"largest of {', '.join(map(str, SESSION_SIZES))} px whose steps take at most {TRAINING_SHARE:.0%} of it, "
                        "and validations are as many as fit beside the steps (at least the last)"}

    def training_calibration(self) -> dict:
        """How the time per step is calibrated: the slowdown applied and the published training figures."""
        from portraitkit.plan.devices import TRAINING_SLOWDOWN

        if self.device.gpu_memory_gb is None:
            return {"slowdown": 1.0, "why": "a CPU's throughput is measured on this machine and calibrated on real training steps"}
        return {"slowdown": TRAINING_SLOWDOWN,
                "why": "seconds per step = traced FLOPs / inference-calibrated throughput x this slowdown, the largest "
                       "ratio of a published T4 training figure to that raw estimate (until a GPU run measures portraitkit's own)",
                "t4_figures": training_calibration()}

    def summary(self) -> str:
        """A few lines for people: the estimate, whether it fits, and what to change if not."""
        lines = [f"Estimate for {self.config.base} ({self.family}) at {self.resolution} px, rank {self.config.rank}, "
                 f"batch {self.config.batch_size}{', text encoder trained' if self.config.train_text_encoder else ''}, "
                 f"on {self.device.name} (estimates, not measurements):"]
        if self.family == "flux2" and self.peak_gpu_mem_gb is not None:
            from portraitkit.plan.klein import recipe_line

            lines.append(f"  recipe      {recipe_line(self.config, self.device.bf16)}")
        if self.peak_gpu_mem_gb is not None:
            lines.append(f"  GPU memory  {self.peak_gpu_mem_gb:5.1f} GiB of {self.device.gpu_memory_gb} GiB")
        budget = f" of {self.device.host_ram_gb:.1f} GiB" if self.device.host_ram_gb else ""
        lines.append(f"  RAM         {self.peak_host_ram_gb:5.1f} GiB{budget}")
        lines.append(f"  time        {self.seconds_per_step:.2f} s/step, {_duration(self.total_seconds)} for {self.config.steps} steps"
                     + (" with output preservation" if self.config.output_preservation else ""))
        if self.config.validations:
            lines.append(f"  validation  {_duration(self.validation_seconds)} more: {self.config.validations} x "
                         f"{self.config.validation_renders} images at {self.config.validation_steps} steps"
                         + (" (longer than the training itself: fewer with --validate-every or --validation-seeds, "
                            "none with --no-validate)" if self.validation_seconds > self.total_seconds else ""))
        if session := self.session():
            lines.append(f"  session     {_duration(session['seconds'])} in all, "
                         + ("within" if session["within"] else "MORE than") + f" a {SESSION_SECONDS // 3600} h Colab session")
        if self.inference.get("peak_gpu_mem_gb") is not None:
            lines.append(f"  sampling    {self.inference['peak_gpu_mem_gb']:.1f} GiB, {self.inference['seconds_per_image']:.0f} s "
                         f"per image at {self.inference['steps']} steps ({self.inference['recipe']})")
        lines.append("  fits" if self.fits else f"  does NOT fit: {self.advice}")
        if self.faster:
            lines.append(f"  faster: {self.faster}")
        return "\n".join(lines)


def _round(value):
    return None if value is None else round(value, 2)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


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
             validation_steps: int | None = None, quantize: str = "auto", targets: str = "attention") -> Plan:
    """Estimate a run's peak GPU memory, RAM and time; when it does not fit, say the cheapest change
    that does, and when it fits with checkpointing, whether it would also fit (faster) without.

    `gradient_checkpointing=None` plans what `train` chooses by default: off where the run fits the
    GPU (on a CPU: its RAM) with room to spare without it (about a quarter faster per step), on elsewhere.
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
    if config.targets != "attention" and arch["family"] != "flux2":
        raise PortraitkitError(f"--targets {config.targets} is for FLUX.2 [klein] bases; Stable Diffusion's LoRA adapts the "
                               "UNet's attention: leave --targets out")
    if arch["family"] == "flux2":  # a transformer, not a UNet: its own measures (`plan.klein`)
        if config.resolution is None and device.gpu_memory_gb is not None:
            config = dataclasses.replace(config, resolution=session_resolution(config, device, arch))
        return _sized_validations(_flux2_plan(config, device, arch))
    config = dataclasses.replace(config, validation_steps=config.validation_steps or SD_SAMPLING_STEPS)
    plan = None
    if recipe == "plain":  # the plain loop never checkpoints
        config = dataclasses.replace(config, gradient_checkpointing=False)
    elif gradient_checkpointing is None:  # train's default
        plan = _estimate(dataclasses.replace(config, gradient_checkpointing=False), device, arch)
        if not _room_to_spare(plan, device):
            plan = None
        config = dataclasses.replace(config, gradient_checkpointing=plan is None)
    plan = _sized_validations(plan or _estimate(config, device, arch))
    if advise and not plan.fits:
        plan.advice = _advice(config, device, plan)
    elif advise and config.gradient_checkpointing and recipe == "portraitkit":
        unchecked = _estimate(dataclasses.replace(config, gradient_checkpointing=False), device, arch)
        if unchecked.fits:
            budget = device.gpu_memory_gb or device.host_ram_gb
            plan.faster = (f"it also fits without gradient checkpointing (--no-gradient-checkpointing): about "
                           f"{unchecked.seconds_per_step:.2f} s/step instead of {plan.seconds_per_step:.2f}, "
                           f"{unchecked.peak_gpu_mem_gb or unchecked.peak_host_ram_gb:.1f} GiB"
                           + (f" of {budget:.1f}, with little room to spare" if not _room_to_spare(unchecked, device) else ""))
    return plan


def _device(gpu: str | Device) -> Device:
    if isinstance(gpu, Device):
        return gpu
    if gpu not in DEVICES:
        raise PortraitkitError(f"unknown --gpu '{gpu}': choose one of {', '.join(DEVICES)}")
    if gpu == "cpu":
        return local_cpu_device()
    return DEVICES[gpu]


def _estimate(config: PlanConfig, device: Device, arch: dict) -> Plan:
    key = arch_key(arch)
    vae_factor = 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    resolution = config.resolution or arch["unet"]["sample_size"] * vae_factor
    if resolution < 8 * vae_factor or resolution % vae_factor:
        raise PortraitkitError(f"resolution {resolution} px does not work: use a multiple of {vae_factor} of at least {8 * vae_factor}")
    recipe = recipe_for(config, device)
    on_gpu = device.gpu_memory_gb is not None
    params = component_parameters(key)
    encoder_names = [name for name in params if name.startswith("text_encoder")]
    weights = {name: count * recipe.weight_bytes for name, count in params.items()}
    encoders = sum(weights[name] for name in encoder_names)

    def graph(name: str, mode: str, batch: int, weight_bytes: int = recipe.weight_bytes) -> dict:
        return trace_pass(key, name, mode, batch, resolution, weight_bytes, recipe.autocast)

    # Output preservation runs the class caption through the UNet with the LoRA beside the training
    # image's pass (both graphs held until the backward pass: a step at twice the batch), plus one
    # forward pass without the LoRA and without gradients.
    graphs = 2 if config.output_preservation else 1
    step = training_step(key, resolution, config.batch_size * graphs, config.rank, recipe.checkpointing,
                          recipe.weight_bytes, recipe.autocast, config.dora)
    lora_numels = list(step["lora_numels"])
    if config.train_text_encoder:  # the encoders run with gradients in every step
        for name in encoder_names:
            encoder = text_encoder_step(key, name, config.batch_size, config.rank, recipe.weight_bytes, recipe.autocast,
                                        config.dora)
            lora_numels += encoder["lora_numels"]
            step = {**step, "peak": step["peak"] + encoder["peak"], "flops": step["flops"] + encoder["flops"]}
    lora_bytes = 4 * sum(lora_numels)  # LoRA weights train in fp32 whatever the base's dtype
    optimizer_bytes = optimizer_state_bytes(lora_numels, recipe.optimizer)
    vae_encode = graph("vae", "encode", 1)
    flops = step["flops"]
    if config.output_preservation:
        flops += graph("unet", "infer", config.batch_size)["flops"]

    if recipe.cached:
        # `train` moves the models so that each phase has on the GPU only what it runs: the VAE and
        # text encoders while caching (one image, all captions at once), then the UNet (and trained
        # encoders); the final validation encodes its prompts, sends the encoders back and brings
        # the VAE, which SDXL's pipeline upcasts to fp32 (as caching does).
        captions = max(graph(name, "encode", CAPTIONS_ENCODED_AT_ONCE)["peak"] for name in encoder_names)
        upcast = _vae_upcasts(arch, recipe)
        vae = weights["vae"] * (2 if upcast else 1)
        trained_encoders = encoders if config.train_text_encoder else 0
        trainer = lora_bytes + optimizer_bytes
        denoise_and_decode = max(graph("unet", "infer", 2)["peak"], graph("vae", "decode", 1, 4 if upcast else recipe.weight_bytes)["peak"])
        phases = {  # (weights on the device, LoRA and optimizer state, peak of the graph run in that phase)
            "load_and_cache": (vae + encoders, lora_bytes, max(vae_encode["peak"], captions)),
            "train_step": (weights["unet"] + trained_encoders, trainer, step["peak"]),
            "validation_prompts": (weights["unet"] + encoders, trainer, captions),
            "validation": (weights["unet"] + trained_encoders + vae, trainer, denoise_and_decode),
        }
    else:  # the plain loop: every model on the GPU, the VAE and text encoders run in every step
        per_step = [graph("vae", "encode", config.batch_size)] + [graph(n, "encode", config.batch_size) for n in encoder_names]
        flops += sum(g["flops"] for g in per_step)
        phases = {"train_step": (sum(weights.values()), lora_bytes + optimizer_bytes,
                                 max([step["peak"]] + [g["peak"] for g in per_step]))}

    tflops = device.achieved_tflops()
    seconds = flops / (tflops * 1e12) * training_slowdown(device)
    if on_gpu:
        phases = {name: on_device + trainer + peak for name, (on_device, trainer, peak) in phases.items()}
        allocated = max(phases.values()) / GIB
        reserved = allocated * (1 + ALLOCATOR_OVERHEAD)
        gpu_total = reserved + CUDA_CONTEXT_GB
        # RAM: every component sits in RAM between from_pretrained and .to("cuda"); during training the
        # VAE and text encoders wait there.
        loaded = sum(weights.values()) if recipe.weight_bytes == 2 else sum(weights.values()) + max(params.values()) * 2
        resting = (weights["vae"] + (0 if config.train_text_encoder else encoders)) if recipe.cached else 0
        # Before anything moves to the GPU, the same on any machine (benchmarks' `load` recipe measures it).
        host_loading = HOST_BASELINE_GB + (loaded + lora_bytes) / GIB
        host = HOST_BASELINE_GB + HOST_CUDA_GB + (max(loaded, resting) + lora_bytes) / GIB
    else:  # on a CPU every model is in RAM all the time, whatever "moving it to the CPU" says
        allocated = reserved = gpu_total = None
        everything = sum(weights.values())
        host_loading = HOST_BASELINE_GB + (everything + lora_bytes) / GIB
        forward = training_step(key, resolution, config.batch_size, config.rank, False, recipe.weight_bytes,
                                 recipe.autocast, config.dora)["peak"]  # what the step's forward pass allocates
        extra = {name: min(CPU_EXTRA_RATIO * peak, CPU_EXTRA_CAP_GB * GIB) for name, (_, _, peak) in phases.items()}
        extra["train_step"] = max(extra["train_step"], CPU_STEP_EXTRA_GB * GIB + CPU_STEP_EXTRA_PER_GB * forward)
        for before, name in zip(phases, list(phases)[1:]):  # what the process kept, it keeps in the next phase
            extra[name] = max(extra[name], extra[before])
        phases = {name: everything + trainer + peak + extra[name] for name, (_, trainer, peak) in phases.items()}
        host = HOST_BASELINE_GB + max(phases.values()) / GIB
    fits_gpu = None if gpu_total is None else gpu_total <= device.gpu_memory_gb
    fits_host = None if device.host_ram_gb is None else host <= device.host_ram_gb

    breakdown = {f"weights_{name}": value / GIB for name, value in weights.items()}
    breakdown.update(host_ram_loading=host_loading, lora_params=lora_bytes / GIB, optimizer_state=optimizer_bytes / GIB,
                     training_activations_and_grads=step["peak"] / GIB, vae_encode_activations=vae_encode["peak"] / GIB)
    return Plan(
        config=config, family=arch["family"], architecture_source=arch["source"], resolution=resolution, device=device,
        peak_gpu_mem_gb=gpu_total, peak_gpu_allocated_gb=allocated, peak_gpu_reserved_gb=reserved, peak_host_ram_gb=host,
        seconds_per_step=seconds, phases_gb={k: v / GIB for k, v in phases.items()}, breakdown_gb=breakdown,
        parameters={**params, "lora": sum(lora_numels)}, flops_per_step=flops,
        inference=_inference(key, arch, resolution, device, recipe, steps=config.validation_steps or SD_SAMPLING_STEPS),
        fits_gpu=fits_gpu, fits_host=fits_host,
        validation_seconds=_validations(config) * config.validation_renders
        * _inference(key, arch, resolution, device, recipe, steps=config.validation_steps or SD_SAMPLING_STEPS)["seconds_per_image"],
    )


def _flux2_plan(config: PlanConfig, device: Device, arch: dict) -> Plan:
    """A FLUX.2 run's Plan: fp16 transformer or NF4 as `config.quantize` says; auto takes fp16
    where it fits this GPU and the RAM, else NF4 (bitsandbytes' 4-bit needs CUDA: none on a CPU)."""
    from portraitkit.plan import klein

    on_gpu = device.gpu_memory_gb is not None
    if config.quantize == "auto" and on_gpu:
        plain = _flux2_plan(dataclasses.replace(config, quantize="none"), device, arch)
        return plain if plain.fits else _flux2_plan(dataclasses.replace(config, quantize="nf4"), device, arch)
    config = dataclasses.replace(config, quantize=config.quantize if on_gpu else "none")
    m = klein.measures(config, device, arch)
    step, nf4 = m["step"], config.quantize == "nf4"
    lora_bytes = 4 * sum(step["lora_numels"])
    # from the training loop on, the transformer, the LoRA, its optimizer state and the cached captions stay
    looping = m["transformer"] + lora_bytes + optimizer_state_bytes(step["lora_numels"], config.optimizer) + m["cached_captions"]
    phases = {  # what `train` has on the device in each phase (placement); an NF4 transformer loads onto the GPU
        "load_and_cache": m["text_encoder"] + m["vae_fp32"] + (m["transformer"] if nf4 else 0)
        + max(m["caption_encoding"], m["vae_encoding"]),
        "train_step": looping + m["activations"],
        "held_out_loss": looping + m["held_out_loss"],
        "validation_prompts": looping + m["text_encoder"] + m["prompt_encoding"],
        "validation": looping + m["vae"] + max(m["denoise"], m["decode"]),
    }
    if on_gpu:
        allocated = max(phases.values()) / GIB
        reserved = allocated * (1 + ALLOCATOR_OVERHEAD)
        gpu_total = reserved + CUDA_CONTEXT_GB
        in_ram = m["text_encoder"] + m["vae"] + (0 if nf4 else m["transformer"])  # diffusers loads into RAM first
        host = HOST_BASELINE_GB + HOST_CUDA_GB + (in_ram + lora_bytes) / GIB
    else:
        allocated = reserved = gpu_total = None
        host = HOST_BASELINE_GB + (m["transformer"] + m["text_encoder"] + m["vae_fp32"] + looping - m["transformer"]
                                   + max(m["activations"], m["caption_encoding"])) / GIB
    tflops = device.achieved_tflops()
    validation_steps = config.validation_steps or klein.SAMPLING_STEPS
    seconds_per_image = klein.render_seconds(m, validation_steps, tflops)
    plan = Plan(
        config=dataclasses.replace(config, gradient_checkpointing=m["checkpointing"], validation_steps=validation_steps),
        family="flux2", architecture_source=arch["source"], resolution=m["resolution"], device=device, peak_gpu_mem_gb=gpu_total,
        peak_gpu_allocated_gb=allocated, peak_gpu_reserved_gb=reserved, peak_host_ram_gb=host,
        seconds_per_step=step["flops"] / (tflops * 1e12) * training_slowdown(device), phases_gb={k: v / GIB for k, v in phases.items()},
        breakdown_gb={name: m[name] / GIB for name in ("transformer", "text_encoder", "vae", "activations", "caption_encoding",
                                                        "cached_captions", "prompt_encoding", "held_out_loss", "denoise", "decode")}
        | {"lora_params": lora_bytes / GIB}, parameters={**m["parameters"], "lora": sum(step["lora_numels"])},
        flops_per_step=step["flops"], inference=_flux2_inference(m, config, device, validation_steps),
        validation_seconds=_validations(config) * config.validation_renders * seconds_per_image,
        fits_gpu=None if gpu_total is None else gpu_total <= device.gpu_memory_gb,
        fits_host=None if device.host_ram_gb is None else host <= device.host_ram_gb, assumptions=[*ASSUMPTIONS, *klein.ASSUMPTIONS])
    if not plan.fits:
        plan.advice = "train at --resolution 512, or on a GPU with more memory" if nf4 else "load the transformer in 4-bit NF4 (--quantize nf4)"
    return plan


def _flux2_inference(m: dict, config: PlanConfig, device: Device, steps: int) -> dict:
    """`sample`'s load with the same transformer recipe as this plan's training: its peak on the
    GPU (phases of `klein.sampling_phases`) and in RAM, and one image's time."""
    from portraitkit.plan import klein

    on_gpu = device.gpu_memory_gb is not None
    phases = klein.sampling_phases(m)
    allocated = max(phases.values()) / GIB
    in_ram = m["text_encoder"] + m["vae"] + (0 if config.quantize == "nf4" else m["transformer"])
    return {
        "recipe": "transformer in 4-bit NF4, Qwen3 on the GPU only to encode the prompts" if config.quantize == "nf4"
        else ("transformer in fp16, Qwen3 on the GPU only to encode the prompts" if on_gpu else "fp32 on the CPU"),
        "quantize": config.quantize, "steps": steps,
        "seconds_per_image": round(klein.render_seconds(m, steps, device.achieved_tflops()), 2),
        "phases_gb": {name: _round(value / GIB) for name, value in phases.items()} if on_gpu else None,
        "peak_gpu_allocated_gb": _round(allocated) if on_gpu else None,
        "peak_gpu_mem_gb": _round(allocated * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_GB) if on_gpu else None,
        "peak_host_ram_gb": _round(HOST_BASELINE_GB + (HOST_CUDA_GB + in_ram / GIB if on_gpu
                                                       else (m["transformer"] + m["text_encoder"] + m["vae"]) / GIB)),
    }


# --- a session's budget ---------------------------------------------------------------------------

# A run should finish in one free Colab session: Colab states no fixed limit for free sessions
# (they "can last up to 12 hours" and end sooner when idle or busy), and learners report
# disconnects after 1.5-3 hours of a busy notebook, so 2 h is the budget. The defaults that a
# user leaves open are sized to it on a GPU: FLUX.2's training size (the largest of SESSION_SIZES
# whose steps take at most TRAINING_SHARE of the budget) and, for every base, how many steps are
# validated (as many as fit in what the steps leave, at least one: the last).
SESSION_SECONDS = 2 * 3600
TRAINING_SHARE = 0.75
SESSION_SIZES = (1024, 768, 512)
DEFAULT_VALIDATIONS = 10  # train's default: every tenth of the run
SD_SAMPLING_STEPS = 30  # the SD and SDXL styles' steps (assets/styles.yaml); klein's are plan.klein.SAMPLING_STEPS


def session_resolution(config: PlanConfig, device: Device, arch: dict) -> int:
    """FLUX.2's default training size on `device`: the largest of SESSION_SIZES at which the run's
    steps take at most TRAINING_SHARE of a session (512 px when none does)."""
    for size in SESSION_SIZES:
        trial = dataclasses.replace(config, resolution=size, validations=0)
        if _flux2_plan(trial, device, arch).total_seconds <= TRAINING_SHARE * SESSION_SECONDS:
            return size
    return SESSION_SIZES[-1]


def _validations(config: PlanConfig) -> int:
    return DEFAULT_VALIDATIONS if config.validations is None else config.validations


def _sized_validations(plan: Plan) -> Plan:
    """A plan whose validations were left open gets train's default count, or on a GPU as many as
    fit in the session beside the steps (at least one), with the time they take."""
    if plan.config.validations is not None:
        return plan
    per_validation = plan.validation_seconds / DEFAULT_VALIDATIONS  # computed at the default count
    count = DEFAULT_VALIDATIONS
    if plan.device.gpu_memory_gb is not None and per_validation > 0:
        room = SESSION_SECONDS - plan.total_seconds
        count = max(1, min(DEFAULT_VALIDATIONS, math.floor(room / per_validation)))
    plan.config = dataclasses.replace(plan.config, validations=count)
    plan.validation_seconds = per_validation * count
    return plan


def training_slowdown(device: Device) -> float:
    """How much slower a GPU trains than its inference-calibrated throughput says (1 on a CPU,
    whose throughput was measured on training steps): `devices.TRAINING_SLOWDOWN`."""
    from portraitkit.plan.devices import TRAINING_SLOWDOWN

    return 1.0 if device.gpu_memory_gb is None else TRAINING_SLOWDOWN


def training_calibration() -> list[dict]:
    """Each published T4 training figure (`devices.T4_TRAINING_FIGURES`) beside this planner's
    estimate of the same settings, with the estimate's error."""
    from portraitkit.plan.devices import T4_TRAINING_FIGURES

    rows = []
    for figure in T4_TRAINING_FIGURES:
        estimate = plan_run(gpu="t4", advise=False, validations=0, **figure["settings"]).seconds_per_step
        rows.append({**{k: v for k, v in figure.items() if k != "settings"}, "estimated_s_per_step": round(estimate, 2),
                     "error": f"{estimate / figure['published_s_per_step'] - 1:+.0%}"})
    return rows


def plan_sampling(base: str, gpu: str | Device = "t4", resolution: int | None = None, steps: int | None = None,
                  quantize: str = "auto") -> dict:
    """`sample`'s load on `gpu`: the recipe (FLUX.2: the fp16 transformer where it fits the GPU and
    the RAM, else NF4), its peak GPU memory and RAM, one image's time, and `fits`."""
    device = _device(gpu)
    arch = architecture(base)
    if arch["family"] == "flux2":
        plan = _flux2_plan(PlanConfig(base=base, resolution=resolution, gpu=device.name, validations=0, validation_steps=steps,
                                      quantize=quantize), device, arch)
        if quantize == "auto" and device.gpu_memory_gb is not None and not _sampling_fits(plan.inference, device):
            plan = _flux2_plan(dataclasses.replace(plan.config, quantize="nf4"), device, arch)
        inference = dict(plan.inference)
    else:
        inference = dict(_estimate(PlanConfig(base=base, resolution=resolution, gpu=device.name, validations=0,
                                              validation_steps=steps), device, arch).inference)
    inference.update(device=device.name, gpu_budget_gb=device.gpu_memory_gb, host_budget_gb=_round(device.host_ram_gb),
                     fits=_sampling_fits(inference, device))
    return inference


def _sampling_fits(inference: dict, device: Device) -> bool:
    return ((inference["peak_gpu_mem_gb"] is None or inference["peak_gpu_mem_gb"] <= device.gpu_memory_gb)
            and (device.host_ram_gb is None or inference["peak_host_ram_gb"] <= device.host_ram_gb))


def _vae_upcasts(arch: dict, recipe: Recipe) -> bool:
    # StableDiffusionXLPipeline decodes in fp32 when the VAE asks for it (SDXL's overflows in fp16)
    return arch["family"] == "sdxl" and recipe.weight_bytes == 2 and arch["vae"].get("force_upcast", True)


def _inference(key: str, arch: dict, resolution: int, device: Device, recipe: Recipe, steps: int = SD_SAMPLING_STEPS) -> dict:
    """One image, `steps` denoising steps with classifier-free guidance, then the VAE decode: the
    pipeline in fp16 on a GPU (fp32 on a CPU), no autocast. Its peak counts every model on the
    GPU at once (the text encoders leave before denoising: an upper bound by their few hundred MB)."""
    on_gpu = device.gpu_memory_gb is not None
    weight_bytes = 2 if on_gpu else 4
    params = component_parameters(key)
    upcast = _vae_upcasts(arch, Recipe(weight_bytes, False, False, "adamw", True))
    unet = trace_pass(key, "unet", "infer", 2, resolution, weight_bytes, False)
    decode = trace_pass(key, "vae", "decode", 1, resolution, 4 if upcast else weight_bytes, False)
    peak = sum(params.values()) * weight_bytes + params["vae"] * 4 * upcast + max(unet["peak"], decode["peak"])
    flops = steps * unet["flops"] + decode["flops"]
    return {
        "recipe": "fp16 pipeline, text encoders on the GPU only to encode the prompts" if on_gpu else "fp32 on the CPU",
        "steps": steps,
        "seconds_per_image": round(flops / (device.achieved_tflops() * 1e12), 2),
        "peak_gpu_allocated_gb": _round(peak / GIB) if on_gpu else None,
        "peak_gpu_mem_gb": _round(peak / GIB * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_GB) if on_gpu else None,
        "peak_host_ram_gb": _round(HOST_BASELINE_GB + (HOST_CUDA_GB + sum(params.values()) * weight_bytes / GIB
                                                        if on_gpu else peak / GIB)),
    }


def optimizer_state_bytes(numels: list[int], optimizer: str) -> int:
    """AdamW's two moment estimates per parameter: 4 bytes each, or 1 byte each in bitsandbytes' 8-bit
    AdamW (plus one fp32 scale per 256-value block), which keeps tensors under 4096 values in 32 bits."""
    if optimizer == "adamw":
        return 8 * sum(numels)
    if optimizer != "adamw8bit":
        raise PortraitkitError(f"unknown optimizer '{optimizer}': use adamw8bit or adamw")
    return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in numels)


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
    if plan.family == "sdxl":
        changes.append(("use the SD1.5 base (--base sd15) at 512 px", {"base": "sd15", "resolution": None}))

    def fits(settings: dict) -> bool:
        trial = dataclasses.replace(config, **settings)
        return _estimate(trial, device, architecture(trial.base)).fits

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

    arch = architecture(base)
    if arch["family"] == "flux2":
        transformer = meta_component(arch_key(arch), "transformer", 2)
        names = set(klein.lora_targets(transformer, targets))
        adapted = [m for name, m in transformer.named_modules() if name in names]
    else:
        unet = meta_component(arch_key(arch), "unet", 2)
        adapted = [m for name, m in unet.named_modules()
                   if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in lora.UNET_TARGETS)]
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
                    validation_renders=len(getattr(config, "validation_styles", ())) * len(getattr(config, "validation_seeds", ())),
                    validation_steps=getattr(config, "validation_steps", None), quantize=getattr(config, "quantize", "auto"),
                    targets=getattr(config, "targets", "attention"))
    if not plan.fits:
        plan.advice = _advice(plan.config, device, plan)
    return plan
