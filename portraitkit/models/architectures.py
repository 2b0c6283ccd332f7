"""The bases' real-size architectures as data (SD1.5, SDXL, FLUX.2 [klein] 4B), and any other base's read from its own files.

The configuration files of SD1.5 and SDXL on the Hugging Face hub are written here as data, so
that the planner and the tests can build the real-size models on PyTorch's meta device (which
allocates nothing) with no download. Keys the classes fill in by default are left out.
"""

from __future__ import annotations

import json
from pathlib import Path

from portraitkit.models import families

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
# FLUX.2 [klein] 4B base. Transformer: the values of black-forest-labs/FLUX.2-klein-base-4B's
# transformer/config.json as published copies of it give them (the same 5 double + 20 single
# blocks, 24 heads of 128, joint_attention_dim 7680 = 3 x Qwen3-4B's 2560, guidance_embeds false
# in DiffSynth-Studio's model config for the klein 4B transformer and in InvokeAI's klein 4B
# preset; the BFL model card: "4 billion parameter rectified flow transformer"). Text encoder:
# Qwen/Qwen3-4B's config.json (36 layers, 2560 wide, 32 query / 8 key-value heads of 128,
# intermediate 9728, vocabulary 151936), which klein ships as text_encoder/. VAE: diffusers'
# AutoencoderKLFlux2 defaults, which are FLUX.2's VAE (32 latent channels, 128-256-512-512,
# batch-norm over the 2x2-patched 128 channels). None of the weights is downloaded here.
KLEIN4B_SOURCE = ("black-forest-labs/FLUX.2-klein-base-4B: transformer/ and text_encoder/ config.json as published "
                  "(checked against DiffSynth-Studio's and InvokeAI's klein 4B configs); vae/ = AutoencoderKLFlux2's defaults")
ARCHITECTURES["klein4b"] = {
    "family": "flux2",
    "source": KLEIN4B_SOURCE,
    "transformer": {"_class_name": "Flux2Transformer2DModel", "patch_size": 1, "in_channels": 128, "num_layers": 5,
                    "num_single_layers": 20, "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 7680,
                    "timestep_guidance_channels": 256, "mlp_ratio": 3.0, "axes_dims_rope": [32, 32, 32, 32], "rope_theta": 2000,
                    "eps": 1e-06, "guidance_embeds": False},
    "vae": {"_class_name": "AutoencoderKLFlux2", "block_out_channels": [128, 256, 512, 512], "latent_channels": 32,
            "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024, "batch_norm_eps": 0.0001},
    "text_encoder": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2560, "intermediate_size": 9728,
                     "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                     "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000, "vocab_size": 151936,
                     "tie_word_embeddings": True, "hidden_act": "silu"},
}
COMPONENTS = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2")


def architecture(base: str) -> dict:
    """The component configurations of a base: the published ones for the presets, the base's own
    config.json files for folders and hub ids (small downloads), the family's preset otherwise."""
    if base in ARCHITECTURES:
        # FLUX.2's classes are not in the floors' diffusers and transformers: one sentence if missing
        families.named(ARCHITECTURES[base]["family"]).require_libraries()
        return ARCHITECTURES[base]
    from portraitkit.models.bases import resolve_base

    spec = resolve_base(base)
    preset = ARCHITECTURES[families.named(spec.family).preset]
    configs = {name: config for name in (*COMPONENTS, "scheduler") if (config := _read_config(spec.source, name))}
    if not ({"unet", "transformer"} & set(configs)):  # no network: the family's published architecture is the best guess
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


def arch_key(arch: dict) -> str:
    """A hashable key for the caches below: the architecture as canonical JSON."""
    return json.dumps({k: arch[k] for k in (*COMPONENTS, "family") if k in arch}, sort_keys=True)


def build_component(arch: dict, name: str):
    """One component as a model object from its configuration (on whatever device is current)."""
    config = {k: v for k, v in arch[name].items() if not k.startswith("_") or k == "_class_name"}
    if name.startswith("text_encoder") and "Qwen3ForCausalLM" in config.get("architectures", []):
        from transformers import Qwen3Config, Qwen3ForCausalLM

        return Qwen3ForCausalLM(Qwen3Config(**{k: v for k, v in config.items() if k not in ("architectures", "_class_name",
                                                                                             "model_type", "torch_dtype", "dtype")}))
    if name.startswith("text_encoder"):
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        with_projection = "CLIPTextModelWithProjection" in config.get("architectures", [])
        cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
        clip = CLIPTextConfig(**{k: v for k, v in config.items() if k not in ("architectures", "_class_name", "model_type")})
        return cls(clip)
    from portraitkit.core.quiet import quiet

    with quiet():  # import-time notices of optional kernels
        import diffusers

    default = {"unet": "UNet2DConditionModel", "transformer": "Flux2Transformer2DModel"}.get(name, "AutoencoderKL")
    return getattr(diffusers, config.get("_class_name", default)).from_config(config)
