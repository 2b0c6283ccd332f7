"""FLUX.2 [klein] 4B, the diffusion-transformer base (family "flux2"): its toy build, its latents,
its text embeddings and its flow-matching training step.

Why this family (issue 25): the 4B models are Apache-2.0 (the 9B ones are FLUX Non-Commercial),
the transformer is the smallest of the 2026 families (~3.9B parameters, ~7.8 GB in fp16, so it
fits a T4 once quantised to 4-bit), and Black Forest Labs publish an undistilled *base*
checkpoint "for fine-tuning, LoRA training" (black-forest-labs/flux2 README, model overview),
which ai-toolkit and OneTrainer train person LoRAs on. diffusers ships the whole pipeline
(Flux2KleinPipeline, Flux2Transformer2DModel, AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler)
in Colab's 0.39 and in 0.42.

How the pieces differ from Stable Diffusion, and so what this module does for the rest of portraitkit:
- latents: the VAE has 32 channels; the pipeline groups them into 2x2 patches (128 channels at
  1/16 of the image size) and normalises each channel with the VAE's own batch-norm statistics
  (`vae.bn`), instead of SD's single scaling factor. `encode_images` does both and keeps the
  spatial layout, so a face mask at that size still multiplies the loss; `pack` makes the
  token sequence the transformer reads.
- text: Qwen3 (a causal language model) reads the caption wrapped in its chat template, and
  the hidden states of three of its layers are stacked into one 3 x 2560 = 7680-wide embedding
  per token, padded to 512 tokens. The transformer gets no attention mask, so the padding takes
  part in attention: training and sampling must pad alike, hence the pipeline's own encoder.
- objective: rectified flow. x_t = (1 - sigma) x_0 + sigma * noise and the transformer predicts
  the velocity noise - x_0 (diffusers' Flux training scripts define the target so), at the
  timestep sigma * 1000 given to the model as sigma.
"""

from __future__ import annotations

import contextlib
import functools

KLEIN_REPO = "black-forest-labs/FLUX.2-klein-base-4B"
# The attention projections of both kinds of block: the double-stream blocks' image (to_*) and
# text (add_*) projections, and the single-stream blocks' fused projection (q, k, v and the MLP's
# input in one matrix: FLUX.2 fuses them) and its output. `--targets attention+mlp` adds the
# double blocks' feed-forward layers of both streams, as ai-toolkit and DiffSynth adapt them (the
# single blocks' MLP is already inside their fused projections); attention alone keeps the file small.
DOUBLE_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
SINGLE_TARGETS = ("to_qkv_mlp_proj", "to_out")
MLP_TARGETS = ("ff.linear_in", "ff.linear_out", "ff_context.linear_in", "ff_context.linear_out")
TARGETS = ("attention", "attention+mlp")
# The layers of Qwen3 whose hidden states the pipeline stacks (its default, and what the real
# 36-layer encoder is used with); the toy encoder has 27 layers so that the same indices exist.
TEXT_LAYERS = (9, 18, 27)
MAX_TOKENS = 512  # the pipeline's default padding length
# The pipeline's prompt encoding keeps every one of Qwen3's 37 hidden states and computes its
# logits over a 151,936-word vocabulary for all 512 tokens: 0.235 GiB per caption in fp16 (traced,
# `plan.tracing.trace_pass`), 4.7 GiB for 20 captions at once, beside Qwen3's own 7.5 GiB on a T4.
# So captions are encoded a few at a time.
PROMPTS_AT_ONCE = 4
# The shift of the flow-matching schedule, sigma -> shift*sigma / (1 + (shift - 1)*sigma): it moves
# the training noise levels towards the noisy end, where a picture's composition is decided, and
# more so the more image tokens there are. The trainers differ (FACTS.md, 2026-12-07): diffusers'
# klein script trains unshifted, ai-toolkit draws a logit-normal level unshifted, musubi-tuner
# recommends a shift that rises with resolution, exp(mu) with mu linear in the image tokens from 0.5
# at 256 to 1.15 at 4096 (FLUX's own `base_shift`/`max_shift`, in SCHEDULER below): about 1.9 at
# 512 px, 3.2 at 1024 px. portraitkit takes musubi-tuner's rule, so a 512 px run (the T4's) is not
# trained as noisily as a 1024 px one, and a 1024 px run keeps the 3 it had. Not yet compared on a
# GPU: no klein run of this project has been measured.
BASE_SHIFT, MAX_SHIFT = 0.5, 1.15  # mu at BASE_TOKENS and MAX_TOKENS_SHIFT image tokens
BASE_TOKENS, MAX_TOKENS_SHIFT = 256, 4096
SHIFT = 3.0  # the scheduler config's static shift (unused while dynamic shifting is on)


def training_shift(resolution: int) -> float:
    """The flow-matching shift for training at `resolution` px: exp(mu), mu linear in the image
    tokens (the latent's 2x2 patches at 1/16 of the picture's side), held at its ends."""
    import math

    tokens = (resolution // 16) ** 2
    share = min(max((tokens - BASE_TOKENS) / (MAX_TOKENS_SHIFT - BASE_TOKENS), 0.0), 1.0)
    return math.exp(BASE_SHIFT + share * (MAX_SHIFT - BASE_SHIFT))


def require_libraries() -> None:
    """One sentence naming the upgrade where the installed libraries predate FLUX.2 [klein]:
    diffusers gained Flux2KleinPipeline in 0.37 (0.36 lacks it), transformers Qwen3 in 4.51;
    portraitkit's floors for Stable Diffusion are older."""
    import diffusers
    import transformers
    from packaging.version import Version

    if Version(diffusers.__version__).release < (0, 37) or Version(transformers.__version__).release < (4, 51):
        from portraitkit.core.errors import PortraitkitError

        raise PortraitkitError(f"FLUX.2 [klein] needs diffusers 0.37 or newer and transformers 4.51 or newer (here: diffusers "
                               f"{diffusers.__version__}, transformers {transformers.__version__}): "
                               "`pip install -U diffusers transformers`, then restart the runtime")


def lora_targets(transformer, targets: str = "attention") -> list[str]:
    """The full names of the transformer's layers that get a LoRA: the attention projections, and
    with `targets="attention+mlp"` the double blocks' feed-forward layers too."""
    names = []
    mlp = MLP_TARGETS if targets == "attention+mlp" else ()
    for name, _ in transformer.named_modules():
        if name.startswith("transformer_blocks.") and (any(name.endswith(".attn." + t) for t in DOUBLE_TARGETS)
                                                       or any(name.endswith("." + t) for t in mlp)):
            names.append(name)
        elif name.startswith("single_transformer_blocks.") and any(name.endswith(".attn." + t) for t in SINGLE_TARGETS):
            names.append(name)
    return names


# --- the toy base -----------------------------------------------------------------------------


def tiny_tokenizer():
    """A byte-level BPE tokenizer with no merges (one token per byte) and the chat template's
    special tokens, built offline: Qwen's own tokenizer would be a 10 MB download. Same class
    and chat-template call as the real one, so the pipeline's prompt encoding runs unchanged."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    # Qwen3's template as the pipeline uses it: one user turn, then the assistant's turn opened
    # (with thinking turned off the real template adds an empty think block, which this toy omits).
    template = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return Qwen2TokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None, chat_template=template, model_max_length=MAX_TOKENS)


def build_tiny():
    """A toy Flux2KleinPipeline: the real classes at toy size, random weights from fixed seeds.

    The VAE keeps the real 8x downsampling (four blocks), so 64 px pictures make 8x8 latents,
    4x4 patches, 16 image tokens; the transformer keeps both kinds of block and the 4-axis
    rotary embedding; the text encoder has 27 layers so that the pipeline's layers 9, 18, 27 exist.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from portraitkit.core.quiet import quiet

    with quiet():
        from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel

    tokenizer = tiny_tokenizer()
    width = 16
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16, 16, 16), norm_num_groups=8, latent_channels=4,
                             layers_per_block=1, sample_size=64)
    torch.manual_seed(1)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=3 * width, timestep_guidance_channels=32, mlp_ratio=3.0, axes_dims_rope=(4, 4, 4, 4),
        rope_theta=2000, eps=1e-6, guidance_embeds=False,
    )
    torch.manual_seed(2)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=32, num_hidden_layers=max(TEXT_LAYERS),
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=MAX_TOKENS,
        rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=False)


# The scheduler configuration of the FLUX family's FlowMatchEulerDiscreteScheduler (shift 3 with
# resolution-dependent dynamic shifting; the klein pipeline computes its own mu at sampling).
SCHEDULER = {"num_train_timesteps": 1000, "shift": SHIFT, "use_dynamic_shifting": True, "base_shift": BASE_SHIFT,
             "max_shift": MAX_SHIFT, "base_image_seq_len": BASE_TOKENS, "max_image_seq_len": MAX_TOKENS_SHIFT}


# --- latents, text, the objective ---------------------------------------------------------------


def encode_images(vae, pixels):
    """Pixels in [-1, 1] (B, 3, H, W) -> normalised patch latents (B, 4 x 32, H/16, W/16): the
    VAE's mean (no sampling, as the pipeline encodes its reference images), 2x2 patches, and the
    VAE's batch-norm statistics."""
    import torch

    latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(patches)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(patches)
    return ((patches - mean) / std).float()


def encode_prompts(pipe, captions: list[str], device=None):
    """Caption -> (B, 512, 3 x hidden) embeddings, as the pipeline makes them when it samples,
    PROMPTS_AT_ONCE captions per call of Qwen3. Where Qwen3 in fp16 overflows (an LLM's
    activations can pass fp16's 65504), the captions are encoded again with its activations in
    fp32 (`fp32_activations`), so a T4 never has to load it in fp32."""
    import torch

    from portraitkit.core.errors import PortraitkitError

    device = device or pipe.text_encoder.device

    def encode():
        return torch.cat([pipe.encode_prompt(captions[i:i + PROMPTS_AT_ONCE], device=device, max_sequence_length=MAX_TOKENS,
                                             text_encoder_out_layers=TEXT_LAYERS)[0]
                          for i in range(0, len(captions), PROMPTS_AT_ONCE)])

    embeds = encode()
    if not torch.isfinite(embeds).all() and pipe.text_encoder.dtype == torch.float16:
        with fp32_activations(pipe.text_encoder):
            # back in fp16 for the transformer, clamped to its range as diffusers' FLUX.2 blocks clamp their text stream
            embeds = encode().clamp(-65504, 65504).to(torch.float16)
    if not torch.isfinite(embeds).all():  # never cache NaN captions
        raise PortraitkitError("Qwen3 encoded the captions to NaN or infinity even with its activations in fp32: check "
                               "metadata.jsonl's captions for unusual text, and train with --mixed-precision bf16 on a GPU that has it")
    return embeds


@contextlib.contextmanager
def fp32_activations(encoder):
    """Inside the block, `encoder` keeps its 16-bit weights but computes in fp32: its token
    embeddings come out in fp32 and each Linear casts its weight to its input's dtype (ComfyUI runs
    fp16 text encoders so: weights stored in 16 bits, activations in 32). The norms and attention
    follow their inputs' dtype. Memory: one layer's fp32 weight copy at a time."""
    import torch
    import torch.nn.functional as F

    def fp32_linear(module, inputs):
        return F.linear(inputs, module.weight.to(inputs.dtype), None if module.bias is None else module.bias.to(inputs.dtype))

    linears = [m for m in encoder.modules() if isinstance(m, torch.nn.Linear)]
    handles = [encoder.get_input_embeddings().register_forward_hook(lambda module, args, output: output.float())]
    for linear in linears:
        linear.forward = functools.partial(fp32_linear, linear)
    try:
        yield encoder
    finally:
        for handle in handles:
            handle.remove()
        for linear in linears:
            del linear.forward  # the class's own forward again


def pack(latents):
    """(B, C, H, W) -> (B, H*W, C) tokens and their (t, h, w, l) position ids, row by row as the
    pipeline orders them."""
    import torch

    b, c, h, w = latents.shape
    tokens = latents.reshape(b, c, h * w).permute(0, 2, 1)
    ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    return tokens, ids.to(latents.device)


def text_ids(embeds):
    """The text tokens' position ids: (0, 0, 0, index) each."""
    import torch

    length = embeds.shape[1]
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length)).to(embeds.device)


def shifted_sigmas(uniform, resolution: int):
    """Uniform draws in (0, 1) -> the shifted noise levels training uses at `resolution` px."""
    shift = training_shift(resolution)
    return shift * uniform / (1 + (shift - 1) * uniform)


def velocity_prediction(transformer, latents, noise, sigmas, embeds, dtype):
    """(predicted velocity, true velocity) for clean `latents` noised to `sigmas` (one per example),
    both (B, C, H, W) in fp32: x_t = (1 - sigma) x_0 + sigma * noise, target noise - x_0."""
    s = sigmas.view(-1, 1, 1, 1).to(latents)
    noisy = (1 - s) * latents + s * noise
    tokens, image_ids = pack(noisy)
    prediction = transformer(hidden_states=tokens.to(dtype), encoder_hidden_states=embeds.to(dtype), timestep=sigmas.to(dtype),
                             img_ids=image_ids, txt_ids=text_ids(embeds), guidance=None, return_dict=False)[0]
    b, c, h, w = latents.shape
    return prediction.float().permute(0, 2, 1).reshape(b, c, h, w), (noise - latents).float()


def finite_or_stop(loss) -> None:
    """Stop at the first non-finite loss with what to do, rather than train a LoRA of NaN."""
    import torch

    from portraitkit.core.errors import PortraitkitError

    if not torch.isfinite(loss).all():
        # Not --mixed-precision no: on a T4 that loads Qwen3 in fp32 (16 GB, more than a free Colab's RAM).
        raise PortraitkitError("the loss became NaN or infinite (too high a learning rate, or an fp16 overflow in the "
                               "transformer): train again into a new --out folder with half the --lr, or on a GPU with bf16 "
                               "(L4, A100: --mixed-precision bf16)")


# Kept out of 4-bit: the layers where the image and text enter the transformer and the one where
# its prediction leaves it, plus the timestep embedding. diffusers' klein training script keeps its
# output layer out of low-precision conversion (`module_filter_fn`, for fp8) and QLoRA's recipe
# keeps a model's input embeddings and output head in 16 bits: each is used once per step, so 4-bit
# saves little there (about 34M weights, 60 MiB) while its rounding reaches every token.
NF4_KEPT = ("x_embedder", "context_embedder", "proj_out", "time_guidance_embed")


def nf4_compute_dtype():
    """bf16 where the GPU has it natively (Ampere and newer: fp16's range overflows in a 3.9B
    transformer where bf16's does not), else fp16 (a T4 reports bf16 only through emulation)."""
    import torch

    native_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native_bf16 else torch.float16


def load_transformer_nf4(source: str):
    """The frozen transformer in bitsandbytes' 4-bit NormalFloat (QLoRA's recipe), quantised on the
    GPU while it loads (it never sits in RAM whole), computing in `nf4_compute_dtype()`, with the
    layers of NF4_KEPT in 16 bits. Unmeasured here (this machine has no GPU):
    benchmarks/gpu_check.py measures it."""
    from portraitkit.core.errors import PortraitkitError
    from portraitkit.core.quiet import quiet

    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:
        raise PortraitkitError(f"the 4-bit transformer needs bitsandbytes, which could not be loaded ({type(error).__name__}: "
                               f"{error}): `pip install -U bitsandbytes` (then restart the runtime in Colab), or --quantize none "
                               "on a GPU with room for the fp16 transformer") from None
    with quiet():
        from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel.from_pretrained(source, subfolder="transformer", quantization_config=nf4_config(),
                                                   torch_dtype=nf4_compute_dtype(), use_safetensors=True)


def nf4_config():
    """diffusers' bitsandbytes config of the 4-bit transformer: NF4, computing in
    `nf4_compute_dtype()`, the layers of NF4_KEPT left in 16 bits (diffusers reads
    `llm_int8_skip_modules` for 4-bit loads too)."""
    from diffusers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=nf4_compute_dtype(),
                              llm_int8_skip_modules=list(NF4_KEPT))
