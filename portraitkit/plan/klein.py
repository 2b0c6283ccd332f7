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
the RAM, else NF4 (`estimate._flux2_plan` chooses; `train` follows the same choice).

Everything here is an estimate for a model never run here: no measurement of klein on any GPU
has calibrated it (`benchmarks/gpu_check.py` measures it on the first GPU run).
"""

from __future__ import annotations

from portraitkit.models.architectures import arch_key
from portraitkit.plan.tracing import component_parameters, linear_parameters, transformer_training_step

NF4_BYTES = 0.5 + 4 / 64  # a 4-bit code per weight and an fp32 absmax per block of 64 (no double quantisation)
CAPTIONS_ENCODED_AT_ONCE = 20
ASSUMPTIONS = [
    "Qwen3's caption encoding (no gradients) holds about one layer's activations at a time: captions x 512 tokens x "
    "(hidden + 3 x intermediate) x 2 bytes (an estimate, not traced)",
    "NF4: every Linear of the transformer quantised (bitsandbytes' default), one dequantised fp16 copy of the largest "
    "alive at a time; norms, embeddings and biases in fp16",
]


def measures(config, device, arch: dict) -> dict:
    """What a FLUX.2 run on `device` holds, in bytes, for `config.quantize` "none" or "nf4":
    each component's weights, the traced training step (peak, FLOPs, LoRA sizes) and the caption
    encoding. `estimate._flux2_plan` turns them into the Plan with its allocator and host assumptions."""
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
    step = transformer_training_step(key, resolution, config.batch_size, config.rank, checkpointing, weight_bytes, on_gpu)
    text = arch["text_encoder"]
    return {
        "resolution": resolution, "checkpointing": checkpointing, "parameters": params, "step": step,
        "transformer": linear["linear"] * NF4_BYTES + (params["transformer"] - linear["linear"]) * 2 if nf4 else params["transformer"] * weight_bytes,
        "text_encoder": params["text_encoder"] * weight_bytes,
        "vae": params["vae"] * 4,  # the cache encodes with the VAE in fp32
        "vae_in_ram": params["vae"] * 2,
        # the fp16 trace's activations, plus one dequantised copy of the largest layer in forward and backward
        "activations": step["peak"] + (2 * linear["largest"] * 2 if nf4 else 0),
        "caption_encoding": CAPTIONS_ENCODED_AT_ONCE * 512 * (text["hidden_size"] + 3 * text["intermediate_size"]) * 2,
    }


def recipe_line(config) -> str:
    """The recipe a FLUX.2 plan assumes, in one line."""
    weights = "4-bit NF4 (bitsandbytes, QLoRA)" if config.quantize == "nf4" else "fp16"
    checkpointing = "gradient checkpointing" if config.gradient_checkpointing else "no gradient checkpointing"
    return f"frozen transformer in {weights}, LoRA in fp32, fp16 autocast, {checkpointing}, captions encoded once by Qwen3 in fp16"
