"""Will a training run fit? Peak GPU memory, peak RAM and time per step, estimated before loading.

Everything here is an *estimate*, and every plan says so. What is computed and what is assumed:

- **Computed exactly**: parameter counts, from the published SD1.5 / SDXL configurations below
  (or a base's own config.json) instantiated on PyTorch's `meta` device, which allocates nothing;
  LoRA parameter counts, from adding the adapters `train` adds; bytes per dtype; optimizer state
  (bitsandbytes' 8-bit AdamW keeps 2 bytes per parameter, and 8 for tensors under 4096 elements).
- **Computed by running the graph on `meta` tensors**: the real-size UNet's forward and backward
  (and the VAE and text encoders where a phase runs them) execute with shapes but no data, while a
  `TorchDispatchMode` adds up the bytes of every tensor storage that is alive (rounded up to the
  512-byte blocks of PyTorch's CUDA allocator) and keeps the peak, and PyTorch's own FLOP formulas
  count the work. A `TorchFunctionMode` applies CUDA autocast's fp16/fp32 casting rules (from the
  `torch.amp` documentation), and attention runs as SDPA's memory-efficient kernel, the one a T4
  uses. Gradient checkpointing recomputes blocks exactly as diffusers does.
- **Assumed**, each listed in `Plan.assumptions`: CUDA context size, caching-allocator overhead,
  the resident size of the Python process before loading.
- **Calibrated on published measurements**, listed in `Plan.calibration`: GPU throughput, from
  SD1.5 inference speeds divided by the traced FLOPs of one such step.

No GPU measurement of portraitkit itself has calibrated these yet: `benchmarks/bench_training.py`
measures the same quantities on real-size models and prints each estimate beside its measurement.
Memory figures are in GiB (2**30 bytes), as nvidia-smi, Colab and PyTorch's messages report them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from portraitkit.errors import PortraitkitError
from portraitkit.settings import setting

GIB = 2**30

# --- the published architectures ------------------------------------------------------------
# The configuration files of the two bases on the Hugging Face hub, written here as data so that a
# plan needs no download. Keys the classes fill in by default are left out.
SD15_SOURCE = "stable-diffusion-v1-5/stable-diffusion-v1-5: unet/, vae/, text_encoder/ and scheduler/ config.json"
SDXL_SOURCE = ("stabilityai/stable-diffusion-xl-base-1.0: unet/, vae/, text_encoder/, text_encoder_2/ "
               "and scheduler/ config.json")
_CLIP_L = {"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
           "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "max_position_embeddings": 77,
           "vocab_size": 49408, "layer_norm_eps": 1e-05, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
_VAE = {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32}
_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
              "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "clip_sample": False}

ARCHITECTURES = {
    "sd15": {
        "family": "sd",
        "source": SD15_SOURCE,
        "unet": {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
                 "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 768,
                 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
                 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]},
        "vae": {**_VAE, "sample_size": 512, "scaling_factor": 0.18215},
        "text_encoder": _CLIP_L,
        "scheduler": {"_class_name": "PNDMScheduler", **_SCHEDULER},
    },
    "sdxl": {
        "family": "sdxl",
        "source": SDXL_SOURCE,
        "unet": {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
                 "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
                 "block_out_channels": [320, 640, 1280], "center_input_sample": False, "cross_attention_dim": 2048,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
                 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
                 "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True},
        "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L,
        "text_encoder_2": {**_CLIP_L, "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
                           "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20,
                           "num_hidden_layers": 32, "projection_dim": 1280},
        "scheduler": {"_class_name": "EulerDiscreteScheduler", **_SCHEDULER, "interpolation_type": "linear",
                      "prediction_type": "epsilon", "timestep_spacing": "leading", "use_karras_sigmas": False},
    },
}
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
CAPTIONS_ENCODED_AT_ONCE = 20  # train encodes all captions in one batch; 10-20 selfies is the course's range


# --- the machines -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """What a run may use on one machine, and how fast its GPU turns FLOPs into steps."""

    name: str
    gpu_memory_gb: float | None  # GiB PyTorch can use (cudaDeviceProp.totalGlobalMem); None: train on the CPU
    host_ram_gb: float | None  # GiB of RAM the run may use; None: not checked
    sd15_its: float | None = None  # published SD1.5 512 px fp16 inference speed, iterations/s (CFG batch 2)
    tflops: float | None = None  # achieved throughput when known directly (not derived from sd15_its)
    source: str = ""

    def achieved_tflops(self) -> float:
        """Achieved dense throughput: a published SD1.5 inference speed times the FLOPs of one step."""
        if self.tflops is not None:
            return self.tflops
        return self.sd15_its * _inference_flops(_arch_key(ARCHITECTURES["sd15"]), 512) / 1e12


DEVICES = {
    "t4": Device(
        "t4", gpu_memory_gb=14.75, host_ram_gb=12.7 - 1.2, sd15_its=6.9,
        source="free Colab T4: 14.75 GiB total capacity (PyTorch out-of-memory messages on Colab); 12.7 GB RAM "
               "(Colab) of which ~0.9-1.4 GB is taken by the VM itself (linux-blog.anracom.com, 2023); "
               "6.9 it/s for SD1.5 at 512 px, fp16, SDPA, batch 1 (M, diffusers docs optimization/torch2.0)"),
    "l4": Device(
        "l4", gpu_memory_gb=22.0, host_ram_gb=None, sd15_its=6.9 * 121 / 65,
        source="E: 24 GB card (NVIDIA L4 datasheet) less the share the T4 loses to the driver; speed = the T4's "
               "measured 6.9 it/s scaled by peak fp16 tensor throughput, 121 vs 65 TFLOP/s (NVIDIA datasheets); "
               "not measured"),
    "a100": Device(
        "a100", gpu_memory_gb=39.4, host_ram_gb=None, sd15_its=31.19,
        source="40 GB A100 as on Colab (E: 39.4 GiB usable); 31.19 it/s for SD1.5, diffusers with torch 2.1 SDPA "
               "on an A100 80GB SXM (M, fal-ai/stable-diffusion-benchmarks README)"),
    "cpu": Device("cpu", gpu_memory_gb=None, host_ram_gb=None, source="this machine's CPU and RAM, measured when planning"),
}

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
# A CPU's throughput: SD1.5's training steps and inference at 512 px reached 0.137-0.152 TFLOP/s
# (traced FLOPs / measured time) where a 1024x1024 fp32 matrix product reaches 0.19-0.20 on the
# same 2-core machine (benchmarks/results/cpu-2026-12-01-sd15.json): about three quarters.
CPU_MATMUL_FRACTION = 0.75
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
    "backward pass run as efficiently as the forward ones; loading, caching and validation are not included",
    "cuDNN convolution workspaces are not counted",
    f"on a CPU, RAM holds more than the live tensors (glibc and oneDNN keep freed memory): up to {CPU_EXTRA_CAP_GB} "
    f"GiB, and in a training step {CPU_STEP_EXTRA_GB} GiB plus {CPU_STEP_EXTRA_PER_GB:.0%} of what its forward pass "
    "allocates if that is more (calibrated on real-size SD1.5 and SDXL on a 2-core CPU machine)",
]


# --- planning settings --------------------------------------------------------------------------


@dataclass
class PlanConfig:
    """A training run to plan; each field's help is also its `portraitkit plan` help."""

    base: str = setting("base model: sd15, sdxl, tiny-sd, tiny-sdxl, a Hugging Face id or a diffusers folder", "sd15")
    resolution: int | None = setting("training size in pixels; default: the base's own (512 SD1.5, 1024 SDXL)", None)
    rank: int = setting("LoRA rank", 16)
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
    inference: dict  # one image at 25 steps on the same machine
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
        return self.seconds_per_step * self.config.steps

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
            "total_seconds": round(self.total_seconds),
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
                "gpu_measurements_of_portraitkit": "none yet: run benchmarks/bench_training.py on a GPU",
            },
            "assumptions": self.assumptions,
        }

    def summary(self) -> str:
        """A few lines for people: the estimate, whether it fits, and what to change if not."""
        lines = [f"Estimate for {self.config.base} ({self.family}) at {self.resolution} px, rank {self.config.rank}, "
                 f"batch {self.config.batch_size}{', text encoder trained' if self.config.train_text_encoder else ''}, "
                 f"on {self.device.name} (estimates, not measurements):"]
        if self.peak_gpu_mem_gb is not None:
            lines.append(f"  GPU memory  {self.peak_gpu_mem_gb:5.1f} GiB of {self.device.gpu_memory_gb} GiB")
        budget = f" of {self.device.host_ram_gb:.1f} GiB" if self.device.host_ram_gb else ""
        lines.append(f"  RAM         {self.peak_host_ram_gb:5.1f} GiB{budget}")
        lines.append(f"  time        {self.seconds_per_step:.2f} s/step, {_duration(self.total_seconds)} for {self.config.steps} steps")
        lines.append("  fits" if self.fits else f"  does NOT fit: {self.advice}")
        if self.faster:
            lines.append(f"  faster: {self.faster}")
        return "\n".join(lines)


def _round(value):
    return None if value is None else round(value, 2)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


# Train leaves gradient checkpointing off only where the run then needs at most this share of the
# GPU's memory: the estimate may be off by some percent, and the user's other notebooks share the GPU.
ROOM_TO_SPARE = 0.8


def plan_run(base: str = "sd15", resolution: int | None = None, rank: int = 16, batch_size: int = 1,
             train_text_encoder: bool = False, gpu: str | Device = "t4", steps: int = 1000, optimizer: str = "adamw8bit",
             gradient_checkpointing: bool | None = None, recipe: str = "portraitkit", advise: bool = True) -> Plan:
    """Estimate a run's peak GPU memory, RAM and time; when it does not fit, say the cheapest change
    that does, and when it fits with checkpointing, whether it would also fit (faster) without.

    `gradient_checkpointing=None` plans what `train` chooses by default: off where the run fits the
    GPU with room to spare without it (about a quarter faster per step), on elsewhere and on a CPU.
    """
    device = _device(gpu)
    config = PlanConfig(base=base, resolution=resolution, rank=rank, batch_size=batch_size,
                        train_text_encoder=train_text_encoder, gpu=device.name, steps=steps, optimizer=optimizer,
                        gradient_checkpointing=gradient_checkpointing, recipe=recipe)
    arch = architecture(base)
    plan = None
    if recipe == "plain":  # the plain loop never checkpoints
        config = dataclasses.replace(config, gradient_checkpointing=False)
    elif gradient_checkpointing is None:  # train's default
        if device.gpu_memory_gb is not None:
            plan = _estimate(dataclasses.replace(config, gradient_checkpointing=False), device, arch)
            if not plan.fits or plan.peak_gpu_mem_gb > ROOM_TO_SPARE * device.gpu_memory_gb:
                plan = None
        config = dataclasses.replace(config, gradient_checkpointing=plan is None)
    plan = plan or _estimate(config, device, arch)
    if advise and not plan.fits:
        plan.advice = _advice(config, device, plan)
    elif advise and config.gradient_checkpointing and recipe == "portraitkit":
        unchecked = _estimate(dataclasses.replace(config, gradient_checkpointing=False), device, arch)
        if unchecked.fits:
            tight = device.gpu_memory_gb is not None and unchecked.peak_gpu_mem_gb > ROOM_TO_SPARE * device.gpu_memory_gb
            plan.faster = (f"it also fits without gradient checkpointing (--no-gradient-checkpointing): about "
                           f"{unchecked.seconds_per_step:.2f} s/step instead of {plan.seconds_per_step:.2f}, "
                           f"{unchecked.peak_gpu_mem_gb or unchecked.peak_host_ram_gb:.1f} GiB"
                           + (f" of {device.gpu_memory_gb}, with little room to spare" if tight else ""))
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
    if config.rank < 1 or config.batch_size < 1 or config.steps < 0:
        raise PortraitkitError("rank and batch size must be at least 1, and steps at least 0")
    key = _arch_key(arch)
    vae_factor = 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    resolution = config.resolution or arch["unet"]["sample_size"] * vae_factor
    if resolution < 8 * vae_factor or resolution % vae_factor:
        raise PortraitkitError(f"resolution {resolution} px does not work: use a multiple of {vae_factor} of at least {8 * vae_factor}")
    recipe = recipe_for(config, device)
    on_gpu = device.gpu_memory_gb is not None
    params = _parameter_counts(key)
    encoder_names = [name for name in params if name.startswith("text_encoder")]
    weights = {name: count * recipe.weight_bytes for name, count in params.items()}
    encoders = sum(weights[name] for name in encoder_names)

    def graph(name: str, mode: str, batch: int, weight_bytes: int = recipe.weight_bytes) -> dict:
        return _graph(key, name, mode, batch, resolution, weight_bytes, recipe.autocast)

    step = _training_step(key, resolution, config.batch_size, config.rank, recipe.checkpointing,
                          recipe.weight_bytes, recipe.autocast)
    lora_numels = list(step["lora_numels"])
    if config.train_text_encoder:  # the encoders run with gradients in every step
        for name in encoder_names:
            encoder = _text_encoder_step(key, name, config.batch_size, config.rank, recipe.weight_bytes, recipe.autocast)
            lora_numels += encoder["lora_numels"]
            step = {**step, "peak": step["peak"] + encoder["peak"], "flops": step["flops"] + encoder["flops"]}
    lora_bytes = 4 * sum(lora_numels)  # LoRA weights train in fp32 whatever the base's dtype
    optimizer_bytes = optimizer_state_bytes(lora_numels, recipe.optimizer)
    vae_encode = graph("vae", "encode", 1)
    flops = step["flops"]

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
    seconds = flops / (tflops * 1e12)
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
        forward = _training_step(key, resolution, config.batch_size, config.rank, False, recipe.weight_bytes,
                                 recipe.autocast)["peak"]  # what the step's forward pass allocates
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
        inference=_inference(key, arch, resolution, device, recipe), fits_gpu=fits_gpu, fits_host=fits_host,
    )


def _vae_upcasts(arch: dict, recipe: Recipe) -> bool:
    # StableDiffusionXLPipeline decodes in fp32 when the VAE asks for it (SDXL's overflows in fp16)
    return arch["family"] == "sdxl" and recipe.weight_bytes == 2 and arch["vae"].get("force_upcast", True)


def _inference(key: str, arch: dict, resolution: int, device: Device, recipe: Recipe, steps: int = 25) -> dict:
    """One image, `steps` denoising steps with classifier-free guidance, then the VAE decode: the
    pipeline in fp16 on a GPU (fp32 on a CPU), no autocast."""
    weight_bytes = 2 if device.gpu_memory_gb is not None else 4
    params = _parameter_counts(key)
    upcast = _vae_upcasts(arch, Recipe(weight_bytes, False, False, "adamw", True))
    unet = _graph(key, "unet", "infer", 2, resolution, weight_bytes, False)
    decode = _graph(key, "vae", "decode", 1, resolution, 4 if upcast else weight_bytes, False)
    peak = sum(params.values()) * weight_bytes + params["vae"] * 4 * upcast + max(unet["peak"], decode["peak"])
    flops = steps * unet["flops"] + decode["flops"]
    on_gpu = device.gpu_memory_gb is not None
    return {
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


# --- architectures ------------------------------------------------------------------------------


def architecture(base: str) -> dict:
    """The component configurations of a base: the published ones for the presets, the base's own
    config.json files for folders and hub ids (small downloads), the family's preset otherwise."""
    if base in ARCHITECTURES:
        return ARCHITECTURES[base]
    from portraitkit.bases import resolve_base

    spec = resolve_base(base)
    preset = ARCHITECTURES["sdxl" if spec.family == "sdxl" else "sd15"]
    configs = {name: config for name in (*COMPONENTS, "scheduler") if (config := _read_config(spec.source, name))}
    if "unet" not in configs:  # no network: the family's published architecture is the best guess
        return {**preset, "source": f"{preset['source']} (assumed: {base}'s own configuration could not be read)"}
    return {"family": spec.family, "source": f"{base}: its own config.json files", **configs}


def _read_config(source: str, name: str) -> dict | None:
    file = "scheduler_config.json" if name == "scheduler" else "config.json"
    local = Path(source) / name / file
    if local.is_file():
        return json.loads(local.read_text())
    if Path(source).is_dir():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(source, file, subfolder=name)).read_text())
    except Exception:  # offline, gated, or a component this base does not have
        return None


def _arch_key(arch: dict) -> str:
    """A hashable key for the caches below: the architecture as canonical JSON."""
    return json.dumps({k: arch[k] for k in (*COMPONENTS, "family") if k in arch}, sort_keys=True)


def build_component(arch: dict, name: str):
    """One component as a model object from its configuration (on whatever device is current)."""
    config = {k: v for k, v in arch[name].items() if not k.startswith("_") or k == "_class_name"}
    if name.startswith("text_encoder"):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        with_projection = "CLIPTextModelWithProjection" in config.get("architectures", [])
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        clip = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "_class_name", "model_type")})
        return cls(clip)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    return (UNet2DConditionModel if name == "unet" else AutoencoderKL).from_config(config)


@contextlib.contextmanager
def _meta(weight_bytes: int):
    """Build modules on the meta device (no memory) in the weights' dtype."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16 if weight_bytes == 2 else torch.float32)
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.set_default_dtype(previous)


def _component(key: str, name: str, weight_bytes: int):
    arch = json.loads(key)
    with _meta(weight_bytes):
        module = build_component(arch, name)
    return module.eval().requires_grad_(False)


@functools.lru_cache(maxsize=32)
def _parameter_counts(key: str) -> dict:
    arch = json.loads(key)
    return {name: sum(p.numel() for p in _component(key, name, 2).parameters()) for name in COMPONENTS if name in arch}


def parameter_counts(base: str = "sd15") -> dict:
    """Exact parameter counts of a base's components, from its architecture on the meta device."""
    return dict(_parameter_counts(_arch_key(architecture(base))))


def lora_parameter_count(base: str = "sd15", rank: int = 4) -> int:
    """Trainable parameters of the UNet LoRA that `train` adds: every Linear named to_q, to_k, to_v
    or to_out.0 gets A (rank x in) and B (out x rank)."""
    import torch

    from portraitkit.train import UNET_TARGETS

    unet = _component(_arch_key(architecture(base)), "unet", 2)
    return sum(rank * (m.in_features + m.out_features) for name, m in unet.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name.endswith("." + t) for t in UNET_TARGETS))


# --- tracing graphs on the meta device ----------------------------------------------------------


def _trace_mode(autocast: bool):
    """A TorchFunctionMode for tracing: attention as on a GPU, and optionally CUDA autocast's casts.

    SDPA runs as its memory-efficient kernel (the one a T4 uses; the CPU's flash kernel keeps the
    same tensors): output plus a log-sum-exp per row, never the N x N attention matrix.

    Autocast itself only acts on CUDA tensors; the meta tensors traced here need the same casts
    made above autograd, so that what the backward pass saves has the dtype it has on a GPU.
    The op lists are those of the torch.amp documentation ("CUDA Ops that can autocast to
    float16 / float32") restricted to what SD's UNet, VAE and CLIP call.
    """
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    to_half = {F.linear, F.conv1d, F.conv2d, F.conv_transpose2d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
               torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addmm,
               torch.Tensor.addmm, F.scaled_dot_product_attention}
    to_float = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax, F.log_softmax, torch.exp,
                torch.Tensor.exp, torch.log, torch.Tensor.log, torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
                torch.Tensor.__rpow__, torch.rsqrt, torch.Tensor.rsqrt, F.mse_loss, torch.sum, torch.Tensor.sum}

    def cast(dtype):
        return lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype else t

    def efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]

    class TraceFunctions(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if autocast and "dtype" not in kwargs:  # an explicit dtype opts an op out of autocast
                if func in to_half:
                    args, kwargs = tree_map(cast(torch.float16), args), tree_map(cast(torch.float16), kwargs)
                elif func in to_float:
                    args, kwargs = tree_map(cast(torch.float32), args), tree_map(cast(torch.float32), kwargs)
            if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
                return efficient_attention(*args, **kwargs)
            return func(*args, **kwargs)

    return TraceFunctions()


class _Tracer:
    """Runs a function on meta tensors and reports the peak bytes of live tensors and the FLOPs."""

    def __init__(self, autocast: bool):
        self.autocast = autocast

    def run(self, fn) -> dict:
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from torch.utils.flop_counter import FlopCounterMode
        from torch.utils.weak import WeakIdKeyDictionary

        registry = getattr(FlopCounterMode(display=False), "flop_registry", {})
        state = {"live": 0, "peak": 0, "flops": 0}
        seen = WeakIdKeyDictionary()  # storage -> bytes counted (0: it existed before the trace)
        finalizers = []

        def free(nbytes):
            state["live"] -= nbytes

        class LiveBytes(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                for t in tree_flatten((args, kwargs))[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage() not in seen:
                        seen[t.untyped_storage()] = 0  # weights and inputs: not the graph's to count
                out = func(*args, **kwargs)
                count = registry.get(func._overloadpacket)
                if count is not None:
                    state["flops"] += count(*args, **kwargs, out_val=out)
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        storage = t.untyped_storage()
                        if storage in seen:
                            continue
                        nbytes = -(-storage.nbytes() // 512) * 512  # the CUDA allocator's 512-byte blocks
                        seen[storage] = nbytes
                        finalizers.append(weakref.ref(storage, lambda _, n=nbytes: free(n)))
                        state["live"] += nbytes
                        state["peak"] = max(state["peak"], state["live"])
                return out

        with LiveBytes(), _trace_mode(self.autocast):
            fn(self)
        return {"peak": state["peak"], "flops": state["flops"]}

    def checkpoint(self, module, *args):
        """diffusers' default checkpointing (non-reentrant); the recomputation runs inside the
        autograd engine, outside the trace's function mode, so it re-enters that mode."""
        import torch.utils.checkpoint

        contexts = lambda: (contextlib.nullcontext(), _trace_mode(self.autocast))  # noqa: E731
        return torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False, context_fn=contexts)


def _unet_inputs(arch: dict, batch: int, resolution: int, dtype, device: str = "meta"):
    import torch

    from portraitkit.train import unet_conditioning

    unet = arch["unet"]
    latent = resolution // 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    latents = torch.randn(batch, unet["in_channels"], latent, latent, device=device)
    cond = {"embeds": torch.randn(batch, 77, unet["cross_attention_dim"], device=device)}
    if unet.get("addition_embed_type") == "text_time":
        pooled = unet["projection_class_embeddings_input_dim"] - 6 * unet["addition_time_embed_dim"]
        cond["pooled"] = torch.randn(batch, pooled, device=device)
    timesteps = torch.zeros(batch, dtype=torch.long, device=device)
    return latents, timesteps, unet_conditioning(cond, resolution, dtype)


def _add_lora(module, rank: int, targets: list[str]) -> list[int]:
    """LoRA as `train` adds it (peft, Gaussian init), trainable weights in fp32; returns their sizes."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets)
    if hasattr(module, "add_adapter") and not module.__class__.__name__.startswith("CLIP"):
        module.add_adapter(config)
    else:
        inject_adapter_in_model(config, module)
    trainable = [p for p in module.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()
    return [p.numel() for p in trainable]


@functools.lru_cache(maxsize=64)
def _training_step(key: str, resolution: int, batch: int, rank: int, checkpointing: bool, weight_bytes: int,
                   autocast: bool) -> dict:
    """One micro-batch of `train`'s loop on the real-size UNet: forward, MSE loss, backward."""
    import torch

    dtype = torch.float16 if weight_bytes == 2 else torch.float32
    return _run_training_step(_component(key, "unet", weight_bytes), json.loads(key), resolution, batch, rank,
                              checkpointing, dtype, autocast, "meta")


def _run_training_step(unet, arch: dict, resolution: int, batch: int, rank: int, checkpointing: bool, dtype,
                       autocast: bool, device: str) -> dict:
    """Add the LoRA, then one forward, loss and backward of `unet` under the live-tensor tracer;
    on meta tensors for the estimates, on real ones for `check_training_step`."""
    from portraitkit.train import UNET_TARGETS

    lora_numels = _add_lora(unet, rank, UNET_TARGETS)
    unet.train()
    tracer = _Tracer(autocast)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        for module in unet.modules():  # diffusers' checkpointing, with autocast re-entered on recompute
            if getattr(module, "gradient_checkpointing", False):
                module._gradient_checkpointing_func = tracer.checkpoint

    def step(_):
        latents, timesteps, cond = _unet_inputs(arch, batch, resolution, dtype, device)
        prediction = unet(latents.to(dtype), timesteps, **cond).sample.float()
        (prediction - latents).pow(2).mean(dim=(1, 2, 3)).mean().backward()

    return {**tracer.run(step), "lora_numels": lora_numels}


def check_training_step(folder: str, resolution: int, rank: int = 16, checkpointing: bool = True) -> dict:
    """The check every memory estimate rests on: one real training step of the UNet in `folder` (a
    diffusers folder) on this CPU, in fp32, counted by the same live-tensor tracer as the meta
    trace. Returns both peaks in GiB (`benchmarks/bench_training.py --recipes trace` runs it)."""
    import torch
    from diffusers import UNet2DConditionModel

    arch = architecture(folder)
    key = _arch_key(arch)
    predicted = _training_step(key, resolution, 1, rank, checkpointing, 4, False)["peak"]
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32, use_safetensors=True)
    unet.requires_grad_(False)
    real = _run_training_step(unet, arch, resolution, 1, rank, checkpointing, torch.float32, False, "cpu")["peak"]
    return {"live_tensor_peak_gb": real / GIB, "traced_peak_gb": predicted / GIB}


@functools.lru_cache(maxsize=16)
def _text_encoder_step(key: str, name: str, batch: int, rank: int, weight_bytes: int, autocast: bool) -> dict:
    """A text encoder trained with LoRA: forward with hidden states, backward (no checkpointing, an upper bound)."""
    import torch

    from portraitkit.train import TEXT_ENCODER_TARGETS

    encoder = _component(key, name, weight_bytes)
    lora_numels = _add_lora(encoder, rank, TEXT_ENCODER_TARGETS)
    encoder.train()

    def step(_):
        out = encoder(torch.zeros(batch, 77, dtype=torch.long, device="meta"), output_hidden_states=True)
        out.hidden_states[-2].float().mean().backward()

    return {**_Tracer(autocast).run(step), "lora_numels": lora_numels}


@functools.lru_cache(maxsize=64)
def _graph(key: str, name: str, mode: str, batch: int, resolution: int, weight_bytes: int, autocast: bool) -> dict:
    """Peak activation bytes and FLOPs of one no-grad pass: VAE encode/decode, text encoding, UNet step."""
    import torch

    arch = json.loads(key)
    module = _component(key, name, weight_bytes)
    dtype = torch.float16 if weight_bytes == 2 or autocast else torch.float32
    latent = resolution // 2 ** (len(arch["vae"]["block_out_channels"]) - 1) if resolution else 0

    def run(_):
        with torch.no_grad():
            if name == "unet":
                latents, timesteps, cond = _unet_inputs(arch, batch, resolution, dtype)
                module(latents.to(dtype), timesteps, **cond)
            elif mode == "encode" and name == "vae":
                module.encode(torch.empty(batch, 3, resolution, resolution, device="meta", dtype=dtype)).latent_dist.mean
            elif mode == "decode":
                module.decode(torch.empty(batch, arch["vae"]["latent_channels"], latent, latent, device="meta", dtype=dtype))
            else:
                module(torch.zeros(batch, 77, dtype=torch.long, device="meta"), output_hidden_states=True)

    return _Tracer(autocast).run(run)


def _inference_flops(key: str, resolution: int) -> float:
    """FLOPs of one classifier-free-guidance denoising step (UNet at batch 2)."""
    return _graph(key, "unet", "infer", 2, resolution, 2, True)["flops"]


# --- this machine -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def local_cpu_device() -> Device:
    """Training on this CPU: all of its RAM, and a throughput measured by a short matrix product."""
    import time

    import psutil
    import torch

    a = torch.randn(1024, 1024)
    torch.mm(a, a)  # warm-up
    rates = []
    for _ in range(5):  # the best of short bursts: one long burst reads lower on a busy machine
        began, runs = time.perf_counter(), 0
        while time.perf_counter() - began < 0.05:
            torch.mm(a, a)
            runs += 1
        rates.append(2 * 1024**3 * runs / (time.perf_counter() - began) / 1e12)
    matmul = max(rates)
    return Device("cpu", gpu_memory_gb=None, host_ram_gb=psutil.virtual_memory().total / GIB,
                  tflops=matmul * CPU_MATMUL_FRACTION,
                  source=f"this machine: {psutil.virtual_memory().total / GIB:.1f} GiB RAM; {CPU_MATMUL_FRACTION:.0%} of a "
                         f"measured fp32 matrix-product rate ({matmul:.2f} TFLOP/s), calibrated on real-size SD1.5 "
                         "on a 2-core CPU machine")


def local_cuda_device() -> Device:
    """The GPU this process would train on, with its real memory and the machine's RAM."""
    import psutil
    import torch

    properties = torch.cuda.get_device_properties(0)
    words = re.findall(r"[a-z0-9]+", properties.name.lower())  # "Tesla T4", "NVIDIA L4", "NVIDIA A100-SXM4-40GB"
    known = next((DEVICES[k] for k in ("t4", "l4", "a100") if k in words), None)
    return Device(
        properties.name, gpu_memory_gb=round(properties.total_memory / GIB, 2),
        host_ram_gb=psutil.virtual_memory().total / GIB,
        sd15_its=known.sd15_its if known else DEVICES["t4"].sd15_its,
        source=(known.source if known else "speed assumed equal to a T4's (unknown GPU)") + "; memory: this GPU and machine",
    )


def plan_for_training(config, device: Device | None = None) -> Plan:
    """The plan of a `TrainConfig` on `device` (default: this machine's GPU), with train's mixed
    precision on a GPU (fp16 or bf16 weights: the same bytes)."""
    device = device or local_cuda_device()
    # prior preservation puts a class image beside each training image in the UNet's batch
    batch = config.batch_size * (2 if config.class_dir else 1)
    plan = plan_run(base=config.base, resolution=config.resolution, rank=config.rank, batch_size=batch,
                    train_text_encoder=config.train_text_encoder, gpu=device, steps=config.steps,
                    optimizer=config.optimizer, gradient_checkpointing=config.gradient_checkpointing, advise=False)
    if not plan.fits:
        plan.advice = _advice(plan.config, device, plan)
    return plan


def check_training_fits(config) -> bool:
    """Stop a GPU run that will not fit, before minutes of loading end in an out-of-memory crash,
    and return whether the run uses gradient checkpointing (decided here when it is left to us).

    A planner failure never blocks training: it prints a warning and the run goes on, with
    checkpointing unless the user turned it off. Setting PORTRAITKIT_SKIP_PLAN=1 skips the check
    (the estimate may be wrong for an unusual setup).
    """
    safe_choice = config.gradient_checkpointing is not False
    if os.environ.get("PORTRAITKIT_SKIP_PLAN") == "1":
        return safe_choice
    if config.mixed_precision == "no":  # the planner knows half-precision GPU runs only
        print("portraitkit: memory is estimated for fp16/bf16 runs, not --mixed-precision no; training without a check.")
        return safe_choice
    try:
        plan = plan_for_training(config)
    except PortraitkitError:
        raise
    except Exception as error:  # a bug or an unusual base must not stop a run that may well fit
        print(f"portraitkit: could not estimate memory ({type(error).__name__}: {error}); training anyway.")
        return safe_choice
    if plan.fits:
        where = f"{plan.peak_gpu_mem_gb:.1f} GiB of GPU memory, " if plan.peak_gpu_mem_gb is not None else ""
        chosen = "" if config.gradient_checkpointing is not None else (
            "; gradient checkpointing on, as it would not fit with room to spare without" if plan.config.gradient_checkpointing
            else "; gradient checkpointing off: it fits with room to spare without, and steps are faster")
        print(f"Estimated peak: {where}{plan.peak_host_ram_gb:.1f} GiB of RAM; it fits this {plan.device.name}{chosen}.")
        return plan.config.gradient_checkpointing
    needs = (f"about {plan.peak_gpu_mem_gb:.1f} GiB of GPU memory and this {plan.device.name} has {plan.device.gpu_memory_gb} GiB"
             if plan.fits_gpu is False else
             f"about {plan.peak_host_ram_gb:.1f} GiB of RAM and this machine has {plan.device.host_ram_gb:.1f} GiB")
    raise PortraitkitError(f"this run would need {needs} (an estimate): {plan.advice}; "
                           "or set PORTRAITKIT_SKIP_PLAN=1 to try anyway")
