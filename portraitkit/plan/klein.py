"""The estimate for FLUX.2 [klein] bases: the same `Plan` as for SD, from the real transformer traced
on the meta device (`tracing.transformer_training_step`) and two recipes for its frozen weights.

- fp16: the transformer's 3.9B parameters in fp16 (7.2 GiB) under fp16 autocast, LoRA in fp32.
- nf4 (QLoRA, Dettmers et al. 2023): its Linear weights in bitsandbytes' 4-bit NormalFloat (half
  a byte per weight plus one fp32 scale per 64), dequantised one layer at a time for the matmul;
  norms, embeddings and biases stay fp16. Activations are those of the fp16 trace, plus the
  largest layer's dequantised copy in flight.

Why a recipe for the RAM as much as for the GPU: diffusers loads every component into RAM before
moving it, and the fp16 transformer (7.2 GiB) beside the fp16 Qwen3-4B encoder (7.5 GiB) is more
than a free Colab's 12.7 GB. bitsandbytes quantises the transformer as it loads, so the NF4
transformer never sits in RAM whole. `quantize=auto` is the fp16 recipe where it fits the GPU and
the RAM, else NF4 (`train` follows the same choice).

Everything here is an estimate for a model never run here: no measurement of klein on any GPU
has calibrated it (`benchmarks/gpu_check.py` measures it on the first GPU run).
"""

from __future__ import annotations

import dataclasses

from portraitkit.models.architectures import arch_key
from portraitkit.plan.tracing import GIB, component_parameters, meta_component, transformer_training_step

NF4_BYTES = 0.5 + 4 / 64  # a 4-bit code per weight and an fp32 absmax per block of 64 (no double quantisation)
CAPTIONS_ENCODED_AT_ONCE = 20
ASSUMPTIONS = [
    "Qwen3's caption encoding (no gradients) holds about one layer's activations at a time: captions x 512 tokens x "
    "(hidden + 3 x intermediate) x 2 bytes (an estimate, not traced)",
    "NF4: every Linear of the transformer quantised (bitsandbytes' default), one dequantised fp16 copy of the largest "
    "alive at a time; norms, embeddings and biases in fp16",
]


def linear_parameters(key: str) -> tuple[int, int]:
    """(parameters in the transformer's Linear layers, parameters of its largest Linear)."""
    import torch

    transformer = meta_component(key, "transformer", 2)
    sizes = [m.weight.numel() for m in transformer.modules() if isinstance(m, torch.nn.Linear)]
    return sum(sizes), max(sizes)


def estimate(config, device, arch: dict):
    """The Plan of `config` (a PlanConfig) for a FLUX.2 base; with quantize=auto the fp16 recipe
    where it fits, else NF4."""
    if config.quantize != "auto" or device.gpu_memory_gb is None:
        chosen = "none" if device.gpu_memory_gb is None else config.quantize  # bitsandbytes' 4-bit needs CUDA
        return _estimate(dataclasses.replace(config, quantize=chosen), device, arch)
    plain = _estimate(dataclasses.replace(config, quantize="none"), device, arch)
    return plain if plain.fits else _estimate(dataclasses.replace(config, quantize="nf4"), device, arch)


def _estimate(config, device, arch: dict):
    from portraitkit.plan import estimate as planner

    key = arch_key(arch)
    resolution = config.resolution or arch["vae"].get("sample_size", 1024)
    if resolution % 16 or resolution < 32:
        raise planner.PortraitkitError(f"resolution {resolution} px does not work for FLUX.2: use a multiple of 16 of at least 32")
    on_gpu = device.gpu_memory_gb is not None
    weight_bytes = 2 if on_gpu else 4
    checkpointing = config.gradient_checkpointing is not False  # a 3.9B transformer: on unless turned off
    params = component_parameters(key)
    linear, largest = linear_parameters(key)
    transformer = (linear * NF4_BYTES + (params["transformer"] - linear) * 2 if config.quantize == "nf4"
                   else params["transformer"] * weight_bytes)
    encoder, vae = params["text_encoder"] * weight_bytes, params["vae"] * 4  # the cache encodes with the VAE in fp32
    step = transformer_training_step(key, resolution, config.batch_size, config.rank, checkpointing, weight_bytes, on_gpu)
    activations = step["peak"] + (2 * largest * 2 if config.quantize == "nf4" else 0)  # forward and backward copies
    lora_bytes = 4 * sum(step["lora_numels"])
    trainer = lora_bytes + planner.optimizer_state_bytes(step["lora_numels"], config.optimizer)
    text = arch["text_encoder"]
    encode = CAPTIONS_ENCODED_AT_ONCE * 512 * (text["hidden_size"] + 3 * text["intermediate_size"]) * 2
    phases = {  # what is on the device in each phase of `train` (placement), in bytes
        "load_and_cache": encoder + vae + encode + (transformer if config.quantize == "nf4" else 0),  # NF4 loads onto the GPU
        "train_step": transformer + trainer + activations,
        "validation": transformer + trainer + vae + activations / 2,  # no gradients: about half the step's graph
    }
    flops = step["flops"]
    seconds = flops / (device.achieved_tflops() * 1e12)
    if on_gpu:
        allocated = max(phases.values()) / GIB
        reserved = allocated * (1 + planner.ALLOCATOR_OVERHEAD)
        gpu_total = reserved + planner.CUDA_CONTEXT_GB
        in_ram = encoder + params["vae"] * 2 + (0 if config.quantize == "nf4" else transformer)
        host = planner.HOST_BASELINE_GB + planner.HOST_CUDA_GB + (in_ram + lora_bytes) / GIB
    else:
        allocated = reserved = gpu_total = None
        host = planner.HOST_BASELINE_GB + (transformer + encoder + vae + trainer + activations) / GIB
    fits_gpu = None if gpu_total is None else gpu_total <= device.gpu_memory_gb
    fits_host = None if device.host_ram_gb is None else host <= device.host_ram_gb
    breakdown = {"weights_transformer": transformer / GIB, "weights_text_encoder": encoder / GIB, "weights_vae": vae / GIB,
                 "lora_params": lora_bytes / GIB, "training_activations_and_grads": activations / GIB,
                 "caption_encoding_activations": encode / GIB}
    steps = config.validation_steps
    validation = config.validations * config.validation_renders * 2 * steps * flops / 3 / (device.achieved_tflops() * 1e12)
    plan = planner.Plan(
        config=dataclasses.replace(config, gradient_checkpointing=checkpointing), family="flux2",
        architecture_source=arch["source"], resolution=resolution, device=device, peak_gpu_mem_gb=gpu_total,
        peak_gpu_allocated_gb=allocated, peak_gpu_reserved_gb=reserved, peak_host_ram_gb=host, seconds_per_step=seconds,
        phases_gb={name: value / GIB for name, value in phases.items()}, breakdown_gb=breakdown,
        parameters={**params, "lora": sum(step["lora_numels"])}, flops_per_step=flops,
        # one image: `steps` steps of two forward passes (classifier-free guidance), a forward a third of a training step
        inference={"steps": steps, "seconds_per_image": round(2 * steps * flops / 3 / (device.achieved_tflops() * 1e12), 2)},
        validation_seconds=validation, fits_gpu=fits_gpu, fits_host=fits_host,
        assumptions=[*planner.ASSUMPTIONS, *ASSUMPTIONS],
    )
    if not plan.fits:
        plan.advice = ("train at --resolution 512, or on a GPU with more memory" if config.quantize == "nf4"
                       else "load the transformer in 4-bit NF4 (--quantize nf4)")
    return plan


def recipe_line(config) -> str:
    """The recipe a FLUX.2 plan assumes, in one line."""
    weights = "4-bit NF4 (bitsandbytes, QLoRA)" if config.quantize == "nf4" else "fp16"
    checkpointing = "gradient checkpointing" if config.gradient_checkpointing else "no gradient checkpointing"
    return f"frozen transformer in {weights}, LoRA in fp32, fp16 autocast, {checkpointing}, captions encoded once by Qwen3 in fp16"
