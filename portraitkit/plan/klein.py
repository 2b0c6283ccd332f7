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
the RAM, else NF4 (`estimate._flux2_plan` and `estimate.plan_sampling` choose; `train` and
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

from portraitkit.models import klein
from portraitkit.models.architectures import arch_key
from portraitkit.plan.tracing import component_parameters, linear_parameters, trace_pass, transformer_training_step

NF4_BYTES = 0.5 + 4 / 64  # a 4-bit code per weight and an fp32 absmax per block of 64 (no double quantisation)
CAPTIONS = 20  # the course's 10-20 photos, each caption cached (fp32) for the whole run
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
    every other pass a run makes. `estimate._flux2_plan` turns them into the Plan."""
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
        "cached_captions": CAPTIONS * klein.MAX_TOKENS * arch["transformer"]["joint_attention_dim"] * 4,
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
