"""What a plan is: the settings planned (`PlanConfig`), how a run spends memory (`Recipe`), the
answer (`Plan`, with its JSON and its summary), and what every family's estimate shares: the
assumptions, a session's budget, the training-time calibration and the optimizer's state.
`estimate` makes plans; `sd` and `klein` measure each family's run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.settings import setting
from portraitkit.plan.devices import DEVICES, TRAINING_SLOWDOWN, Device

CAPTIONS_ENCODED_AT_ONCE = 20  # the course's 10-20 selfies: SD encodes their captions in one batch, FLUX.2 caches them all

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
    sized_resolution: bool = False  # the size was chosen for the session (FLUX.2 left at its default on a GPU)
    recipe: str | None = None  # the recipe in words, where the family has more than one (FLUX.2: fp16 or NF4)
    training_figures: list | None = None  # the published T4 training figures beside this planner's (`estimate.training_calibration`)
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
            "peak_gpu_mem_gb": rounded(self.peak_gpu_mem_gb),
            "peak_gpu_allocated_gb": rounded(self.peak_gpu_allocated_gb),
            "peak_gpu_reserved_gb": rounded(self.peak_gpu_reserved_gb),
            "peak_host_ram_gb": rounded(self.peak_host_ram_gb),
            "seconds_per_step": round(self.seconds_per_step, 3),
            "validation_seconds": round(self.validation_seconds),
            "total_seconds": round(self.total_seconds),
            "total_includes_validation": False,
            "session": self.session(),
            "fits": self.fits,
            "fits_gpu": self.fits_gpu,
            "fits_host": self.fits_host,
            "gpu_budget_gb": device.gpu_memory_gb,
            "host_budget_gb": rounded(device.host_ram_gb),
            "advice": self.advice,
            "faster": self.faster,
            "phases_gb": {k: rounded(v) for k, v in self.phases_gb.items()},
            "breakdown_gb": {k: rounded(v) for k, v in self.breakdown_gb.items()},
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
        if self.device.gpu_memory_gb is None:
            return {"slowdown": 1.0, "why": "a CPU's throughput is measured on this machine and calibrated on real training steps"}
        return {"slowdown": TRAINING_SLOWDOWN,
                "why": "seconds per step = traced FLOPs / inference-calibrated throughput x this slowdown, the largest "
                       "ratio of a published T4 training figure to that raw estimate (until a GPU run measures portraitkit's own)",
                "t4_figures": self.training_figures}

    def summary(self) -> str:
        """A few lines for people: the estimate, whether it fits, and what to change if not."""
        lines = [f"Estimate for {self.config.base} ({self.family}) at {self.resolution} px, rank {self.config.rank}, "
                 f"batch {self.config.batch_size}{', text encoder trained' if self.config.train_text_encoder else ''}, "
                 f"on {self.device.name} (estimates, not measurements):"]
        if self.recipe and self.peak_gpu_mem_gb is not None:
            lines.append(f"  recipe      {self.recipe}")
        if self.peak_gpu_mem_gb is not None:
            lines.append(f"  GPU memory  {self.peak_gpu_mem_gb:5.1f} GiB of {self.device.gpu_memory_gb} GiB")
        budget = f" of {self.device.host_ram_gb:.1f} GiB" if self.device.host_ram_gb else ""
        lines.append(f"  RAM         {self.peak_host_ram_gb:5.1f} GiB{budget}")
        lines.append(f"  time        {self.seconds_per_step:.2f} s/step, {duration(self.total_seconds)} for {self.config.steps} steps"
                     + (" with output preservation" if self.config.output_preservation else ""))
        if self.config.validations:
            lines.append(f"  validation  {duration(self.validation_seconds)} more: {self.config.validations} x "
                         f"{self.config.validation_renders} images at {self.config.validation_steps} steps"
                         + (" (longer than the training itself: fewer with --validate-every or --validation-seeds, "
                            "none with --no-validate)" if self.validation_seconds > self.total_seconds else ""))
        if session := self.session():
            lines.append(f"  session     {duration(session['seconds'])} in all, "
                         + ("within" if session["within"] else "MORE than") + f" a {SESSION_SECONDS // 3600} h Colab session")
        if self.inference.get("peak_gpu_mem_gb") is not None:
            lines.append(f"  sampling    {self.inference['peak_gpu_mem_gb']:.1f} GiB, {self.inference['seconds_per_image']:.0f} s "
                         f"per image at {self.inference['steps']} steps ({self.inference['recipe']})")
        lines.append("  fits" if self.fits else f"  does NOT fit: {self.advice}")
        if self.faster:
            lines.append(f"  faster: {self.faster}")
        return "\n".join(lines)


def rounded(value):
    return None if value is None else round(value, 2)


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def validations_of(config: PlanConfig) -> int:
    """The validated steps a plan counts: its own number, or train's default when left open."""
    return DEFAULT_VALIDATIONS if config.validations is None else config.validations


def training_slowdown(device: Device) -> float:
    """How much slower a GPU trains than its inference-calibrated throughput says (1 on a CPU,
    whose throughput was measured on training steps): `devices.TRAINING_SLOWDOWN`."""
    return 1.0 if device.gpu_memory_gb is None else TRAINING_SLOWDOWN


def optimizer_state_bytes(numels: list[int], optimizer: str) -> int:
    """AdamW's two moment estimates per parameter: 4 bytes each, or 1 byte each in bitsandbytes' 8-bit
    AdamW (plus one fp32 scale per 256-value block), which keeps tensors under 4096 values in 32 bits."""
    if optimizer == "adamw":
        return 8 * sum(numels)
    if optimizer != "adamw8bit":
        raise PortraitkitError(f"unknown optimizer '{optimizer}': use adamw8bit or adamw")
    return sum(2 * n + 8 * math.ceil(n / 256) if n >= 4096 else 8 * n for n in numels)
