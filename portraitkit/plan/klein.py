"""The estimate for FLUX.2 [klein] bases: the same `Plan` as for SD, from the real transformer and
Qwen3 traced on the meta device (`tracing`) and two recipes for the frozen transformer's weights.

- fp16: the transformer's 3.9B parameters in fp16 (7.2 GiB) under fp16 autocast, LoRA in fp32.
- nf4 (QLoRA, Dettmers et al. 2023): its Linear weights in bitsandbytes' 4-bit NormalFloat (half
  a byte per weight plus one fp32 scale per 64), dequantised one layer at a time for the matmul;
  the layers `models.klein.NF4_KEPT`, norms and biases stay in 16 bits. Activations are those of
  the fp16 trace, plus the largest layer's dequantised copy in flight.

Why a recipe for the RAM as much as for the GPU: diffusers loads every component into RAM before
moving it, and the fp16 transformer (7.2 GiB) beside the fp16 Qwen3-4B encoder (7.5 GiB) is more
than a free Colab's 12.7 GB. bitsandbytes quantises the transformer as it loads, so the NF4
transformer never sits in RAM whole. `quantize=auto` is the fp16 recipe where it fits the GPU and
the RAM, else NF4 (`flux2_plan` and `estimate.plan_sampling` choose; `train` and
`sample` follow the same choice).

Every phase a run goes through is traced: caching (Qwen3 encoding PROMPTS_AT_ONCE captions with
all its hidden states and logits; the VAE encoding in fp32), the training step, the held-out
loss (one photo's HELD_OUT_DRAWS noise levels at a time), validation's prompt encoding (Qwen3 on
the GPU beside the transformer, one prompt at a time), and validation's renders (one denoising
pass at a time: the klein pipeline runs the prompt and the negative prompt as two passes, then
the VAE decodes). Everything here is an estimate for a model never run here: no measurement of
klein on any GPU has calibrated it (`benchmarks/gpu_check.py` measures it on the first GPU run).
"""

from __future__ import annotations

import dataclasses

from portraitkit.models import klein
from portraitkit.models.architectures import arch_key
from portraitkit.plan import plans
from portraitkit.plan.devices import Device
from portraitkit.plan.plans import (ALLOCATOR_OVERHEAD, CAPTIONS_ENCODED_AT_ONCE, CUDA_CONTEXT_GB, HOST_BASELINE_GB, HOST_CUDA_GB, Plan, PlanConfig,
                                    optimizer_state_bytes, rounded, training_slowdown, validations_of)
from portraitkit.plan.tracing import GIB, component_parameters, linear_parameters, trace_pass, transformer_training_step

NF4_BYTES = 0.5 + 4 / 64  # a 4-bit code per weight and an fp32 absmax per block of 64 (no double quantisation)
HELD_OUT_DRAWS = 4  # the held-out loss's batch: one photo at train.validate.HELD_OUT_DRAWS noise levels
SAMPLING_STEPS = 50  # klein's styles draw 50 steps with guidance (assets/styles.yaml, its `flux2` defaults)
ASSUMPTIONS = [
    "NF4: the transformer's Linear layers quantised but its input, output and timestep layers (models.klein.NF4_KEPT), "
    "one dequantised 16-bit copy of the largest alive at a time; those layers, norms and biases in 16 bits",
    "klein's sampling: the prompt and the negative prompt run as two transformer passes per step (the pipeline's "
    "guidance), then one VAE decode; Qwen3 is on the GPU only while the prompts are encoded",
]


def measures(config, device, arch: dict) -> dict:
    """What a FLUX.2 run on `device` holds, in bytes, for `config.quantize` "none" or "nf4":
    each component's weights, the traced training step (peak, FLOPs, LoRA sizes) and the peak of
    every other pass a run makes. `flux2_plan` turns them into the Plan."""
    from portraitkit.core.errors import PortraitkitError

    key = arch_key(arch)
    resolution = config.resolution or arch["vae"].get("sample_size", 1024)
    if resolution % 16 or resolution < 32:
        raise PortraitkitError(f"resolution {resolution} px does not work for FLUX.2: use a multiple of 16 of at least 32")
    on_gpu = device.gpu_memory_gb is not None
    weight_bytes = 2 if on_gpu else 4
    checkpointing = config.gradient_checkpointing is not False  # a 3.9B transformer: on unless turned off
    params = component_parameters(key)
    linear = linear_parameters(key)
    nf4 = config.quantize == "nf4"
    dequantised = 2 * linear["largest"] * 2 if nf4 else 0  # one layer's 16-bit copy in forward and in backward

    def peak(name, mode, batch, weights=weight_bytes):
        size = 0 if name == "text_encoder" else resolution  # captions are 512 tokens at any picture size
        return trace_pass(key, name, mode, batch, size, weights, False)

    step = transformer_training_step(key, resolution, config.batch_size, config.rank, checkpointing, weight_bytes, on_gpu,
                                     config.targets)
    denoise = peak("transformer", "infer", 1)
    decode = peak("vae", "decode", 1)
    return {
        "resolution": resolution, "checkpointing": checkpointing, "parameters": params, "step": step,
        "transformer": linear["linear"] * NF4_BYTES + (params["transformer"] - linear["linear"]) * 2 if nf4 else params["transformer"] * weight_bytes,
        "text_encoder": params["text_encoder"] * weight_bytes,
        "vae": params["vae"] * weight_bytes,
        "vae_fp32": params["vae"] * 4,  # the cache encodes with the VAE in fp32
        "activations": step["peak"] + dequantised,
        "caption_encoding": peak("text_encoder", "encode", klein.PROMPTS_AT_ONCE)["peak"],
        "vae_encoding": peak("vae", "encode", 1, 4)["peak"],
        "cached_captions": CAPTIONS_ENCODED_AT_ONCE * klein.MAX_TOKENS * arch["transformer"]["joint_attention_dim"] * 4,
        "prompt_encoding": peak("text_encoder", "encode", 1)["peak"],
        "held_out_loss": trace_pass(key, "transformer", "infer", HELD_OUT_DRAWS, resolution, weight_bytes, on_gpu)["peak"] + dequantised / 2,
        "denoise": denoise["peak"] + dequantised / 2, "decode": decode["peak"],
        "render_flops": {"per_step": 2 * denoise["flops"], "decode": decode["flops"]},
    }


def render_seconds(m: dict, steps: int, tflops: float) -> float:
    """One klein image at `steps` guided steps (two transformer passes each) and its decode."""
    return (steps * m["render_flops"]["per_step"] + m["render_flops"]["decode"]) / (tflops * 1e12)


def sampling_phases(m: dict) -> dict:
    """What `sample` has on the GPU (bytes): the prompts encoded with Qwen3 beside the transformer
    and the VAE, then Qwen3 back in RAM while the transformer denoises and the VAE decodes."""
    return {"prompts": m["transformer"] + m["vae"] + m["text_encoder"] + m["prompt_encoding"],
            "denoise_and_decode": m["transformer"] + m["vae"] + max(m["denoise"], m["decode"])}


def recipe_line(config, bf16: bool = False) -> str:
    """The recipe a FLUX.2 plan assumes, in one line."""
    compute = "bf16" if bf16 else "fp16"
    weights = f"4-bit NF4 computing in {compute} (bitsandbytes, QLoRA)" if config.quantize == "nf4" else compute
    checkpointing = "gradient checkpointing" if config.gradient_checkpointing else "no gradient checkpointing"
    return (f"frozen transformer in {weights}, LoRA in fp32, {compute} autocast, {checkpointing}, captions encoded once by "
            f"Qwen3 in {compute}, {klein.PROMPTS_AT_ONCE} at a time")


def flux2_plan(config: PlanConfig, device: Device, arch: dict) -> Plan:
    """A FLUX.2 run's Plan: fp16 transformer or NF4 as `config.quantize` says; auto takes fp16
    where it fits this GPU and the RAM, else NF4 (bitsandbytes' 4-bit needs CUDA: none on a CPU)."""
    on_gpu = device.gpu_memory_gb is not None
    if config.quantize == "auto" and on_gpu:
        plain = flux2_plan(dataclasses.replace(config, quantize="none"), device, arch)
        return plain if plain.fits else flux2_plan(dataclasses.replace(config, quantize="nf4"), device, arch)
    config = dataclasses.replace(config, quantize=config.quantize if on_gpu else "none")
    m = measures(config, device, arch)
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
    validation_steps = config.validation_steps or SAMPLING_STEPS
    seconds_per_image = render_seconds(m, validation_steps, tflops)
    plan = Plan(
        config=dataclasses.replace(config, gradient_checkpointing=m["checkpointing"], validation_steps=validation_steps),
        family="flux2", architecture_source=arch["source"], resolution=m["resolution"], device=device, peak_gpu_mem_gb=gpu_total,
        peak_gpu_allocated_gb=allocated, peak_gpu_reserved_gb=reserved, peak_host_ram_gb=host,
        seconds_per_step=step["flops"] / (tflops * 1e12) * training_slowdown(device), phases_gb={k: v / GIB for k, v in phases.items()},
        breakdown_gb={name: m[name] / GIB for name in ("transformer", "text_encoder", "vae", "activations", "caption_encoding",
                                                        "cached_captions", "prompt_encoding", "held_out_loss", "denoise", "decode")}
        | {"lora_params": lora_bytes / GIB}, parameters={**m["parameters"], "lora": sum(step["lora_numels"])},
        flops_per_step=step["flops"], inference=flux2_inference(m, config, device, validation_steps),
        validation_seconds=validations_of(config) * config.validation_renders * seconds_per_image,
        fits_gpu=None if gpu_total is None else gpu_total <= device.gpu_memory_gb,
        fits_host=None if device.host_ram_gb is None else host <= device.host_ram_gb, assumptions=[*plans.ASSUMPTIONS, *ASSUMPTIONS],
        recipe=recipe_line(dataclasses.replace(config, gradient_checkpointing=m["checkpointing"]), device.bf16))
    if not plan.fits:
        plan.advice = "train at --resolution 512, or on a GPU with more memory" if nf4 else "load the transformer in 4-bit NF4 (--quantize nf4)"
    return plan


def flux2_inference(m: dict, config: PlanConfig, device: Device, steps: int) -> dict:
    """`sample`'s load with the same transformer recipe as this plan's training: its peak on the
    GPU (phases of `klein.sampling_phases`) and in RAM, and one image's time."""
    on_gpu = device.gpu_memory_gb is not None
    phases = sampling_phases(m)
    allocated = max(phases.values()) / GIB
    in_ram = m["text_encoder"] + m["vae"] + (0 if config.quantize == "nf4" else m["transformer"])
    return {
        "recipe": "transformer in 4-bit NF4, Qwen3 on the GPU only to encode the prompts" if config.quantize == "nf4"
        else ("transformer in fp16, Qwen3 on the GPU only to encode the prompts" if on_gpu else "fp32 on the CPU"),
        "quantize": config.quantize, "steps": steps,
        "seconds_per_image": round(render_seconds(m, steps, device.achieved_tflops()), 2),
        "phases_gb": {name: rounded(value / GIB) for name, value in phases.items()} if on_gpu else None,
        "peak_gpu_allocated_gb": rounded(allocated) if on_gpu else None,
        "peak_gpu_mem_gb": rounded(allocated * (1 + ALLOCATOR_OVERHEAD) + CUDA_CONTEXT_GB) if on_gpu else None,
        "peak_host_ram_gb": rounded(HOST_BASELINE_GB + (HOST_CUDA_GB + in_ram / GIB if on_gpu
                                                       else (m["transformer"] + m["text_encoder"] + m["vae"]) / GIB)),
    }
