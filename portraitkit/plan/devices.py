"""The machines a run may use: their memory budgets and how fast each turns FLOPs into steps.

A GPU's throughput is not its datasheet peak: it is a published SD1.5 inference speed times the
FLOPs of one such step (traced on the meta device), so that kernels run as efficiently as they
do in practice. This machine's CPU is measured directly.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from portraitkit.models.architectures import ARCHITECTURES, arch_key
from portraitkit.plan.tracing import GIB, inference_flops


@dataclass(frozen=True)
class Device:
    """What a run may use on one machine, and how fast its GPU turns FLOPs into steps."""

    name: str
    gpu_memory_gb: float | None  # GiB PyTorch can use (cudaDeviceProp.totalGlobalMem); None: train on the CPU
    host_ram_gb: float | None  # GiB of RAM the run may use; None: not checked
    sd15_its: float | None = None  # published SD1.5 512 px fp16 inference speed, iterations/s (CFG batch 2)
    tflops: float | None = None  # achieved throughput when known directly (not derived from sd15_its)
    source: str = ""
    bf16: bool = False  # native bf16 (Ampere and newer): FLUX.2's NF4 layers compute in it

    def achieved_tflops(self) -> float:
        """Achieved dense throughput: a published SD1.5 inference speed times the FLOPs of one step."""
        if self.tflops is not None:
            return self.tflops
        return self.sd15_its * inference_flops(arch_key(ARCHITECTURES["sd15"]), 512) / 1e12


DEVICES = {
    "t4": Device(
        "t4", gpu_memory_gb=14.75, host_ram_gb=12.7 - 1.2, sd15_its=6.9,
        source="free Colab T4: 14.75 GiB total capacity (PyTorch out-of-memory messages on Colab); 12.7 GB RAM "
               "(Colab) of which ~0.9-1.4 GB is taken by the VM itself (linux-blog.anracom.com, 2023); "
               "6.9 it/s for SD1.5 at 512 px, fp16, SDPA, batch 1 (M, diffusers docs optimization/torch2.0)"),
    "l4": Device(
        "l4", gpu_memory_gb=22.0, host_ram_gb=None, sd15_its=6.9 * 121 / 65, bf16=True,
        source="E: 24 GB card (NVIDIA L4 datasheet) less the share the T4 loses to the driver; speed = the T4's "
               "measured 6.9 it/s scaled by peak fp16 tensor throughput, 121 vs 65 TFLOP/s (NVIDIA datasheets); "
               "not measured"),
    "a100": Device(
        "a100", gpu_memory_gb=39.4, host_ram_gb=None, sd15_its=31.19, bf16=True,
        source="40 GB A100 as on Colab (E: 39.4 GiB usable); 31.19 it/s for SD1.5, diffusers with torch 2.1 SDPA "
               "on an A100 80GB SXM (M, fal-ai/stable-diffusion-benchmarks README)"),
    "cpu": Device("cpu", gpu_memory_gb=None, host_ram_gb=None, source="this machine's CPU and RAM, measured when planning"),
}

# The throughput above is calibrated on inference; training runs slower than its FLOPs say
# (optimizer steps, casts, the allocator, smaller kernels in the backward pass). Two published T4
# training figures state their settings well enough to plan the same run (FACTS.md); the planner's
# raw estimate was below both: 1.20x for diffusers' SDXL notebook (whose script also encodes each
# image with the VAE every step, counted here), 1.56x for kohya's SD1.5 run if it trained without
# gradient checkpointing (1.18x if with: the notebook does not say). The larger applies to every
# GPU's training steps until a GPU run of portraitkit measures its own, so "fits in a session" errs
# long (`estimate.training_calibration` prints each figure's remaining error). Left out:
# kohya-colab's SD1.5 figure (~0.8 s/step, batch 2, dim 32, Prodigy), which states no resolution.
TRAINING_SLOWDOWN = 1.56
T4_TRAINING_FIGURES = [
    {"what": "SDXL DreamBooth-LoRA, 1024 px, rank 4, batch 1, 8-bit AdamW, gradient checkpointing, fp16",
     "published_s_per_step": 2.65, "source": "huggingface/notebooks diffusers/SDXL_DreamBooth_LoRA_.ipynb: 500 steps in 68 min",
     "settings": {"base": "sdxl", "rank": 4, "gradient_checkpointing": True}, "vae_every_step": True},
    {"what": "kohya LoRA on SD1.5, dim 16 with the text encoder, batch 6, 512 px, fp16, cached latents",
     "published_s_per_step": 1.53, "source": "Linaqruf/kohya-trainer notebook outputs: 1.53 s/it",
     "settings": {"base": "sd15", "rank": 16, "batch_size": 6, "train_text_encoder": True, "gradient_checkpointing": False},
     "vae_every_step": False},
]

# A CPU's throughput: SD1.5's training steps and inference at 512 px reached 0.137-0.152 TFLOP/s
# (traced FLOPs / measured time) where a 1024x1024 fp32 matrix product reaches 0.19-0.20 on the
# same 2-core machine (benchmarks/results/cpu-2026-12-01-sd15.json): about three quarters.
CPU_MATMUL_FRACTION = 0.75


@functools.lru_cache(maxsize=1)
def local_cpu_device() -> Device:
    """Training on this CPU: the RAM available now, and a throughput measured by a short matrix product."""
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
    # The RAM a run here may use: what is free now plus what this process already holds.
    memory = psutil.virtual_memory()
    usable = (memory.available + psutil.Process().memory_info().rss) / GIB
    return Device("cpu", gpu_memory_gb=None, host_ram_gb=usable,
                  tflops=matmul * CPU_MATMUL_FRACTION,
                  source=f"this machine: {usable:.1f} GiB of its {memory.total / GIB:.1f} GiB RAM available; {CPU_MATMUL_FRACTION:.0%} of a "
                         f"measured fp32 matrix-product rate ({matmul:.2f} TFLOP/s), calibrated on real-size SD1.5 "
                         "on a 2-core CPU machine")


def local_cuda_device(index: int = 0, processes_here: int = 1) -> Device:
    """GPU `index`, with its real memory, and this process's share of the machine's RAM when
    `processes_here` training processes (one per GPU) each load their own copy of the models."""
    import psutil
    import torch

    properties = torch.cuda.get_device_properties(index)
    words = re.findall(r"[a-z0-9]+", properties.name.lower())  # "Tesla T4", "NVIDIA L4", "NVIDIA A100-SXM4-40GB"
    known = next((DEVICES[k] for k in ("t4", "l4", "a100") if k in words), None)
    return Device(
        properties.name, gpu_memory_gb=round(properties.total_memory / GIB, 2),
        bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        host_ram_gb=psutil.virtual_memory().total / GIB / processes_here,
        sd15_its=known.sd15_its if known else DEVICES["t4"].sd15_its,
        source=(known.source if known else "speed assumed equal to a T4's (unknown GPU)") + "; memory: this GPU and machine"
               + (f", RAM shared by {processes_here} processes" if processes_here > 1 else ""),
    )
