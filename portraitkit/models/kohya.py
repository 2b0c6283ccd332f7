"""The kohya LoRA file, as AUTOMATIC1111, ComfyUI and kohya's own scripts read it.

Keys: `<prefix>_<module path with _>.lora_down.weight`, `.lora_up.weight` and `.alpha` per module
(prefixes `lora_unet`, `lora_te` for SD1.x's text encoder, `lora_te1`/`lora_te2` for SDXL's).

DoRA (peft's `use_dora`) learns a magnitude m per output row: W' = m * (W + dW) / ||W + dW||, the
norm taken per row. ComfyUI reads a `dora_scale` of shape (out, 1) as per-output and computes
W' = (W + dW) * dora_scale / ||W||, dividing by the row norms of the ORIGINAL weight; so the file
holds dora_scale = m * ||W|| / ||W + dW||, with which ComfyUI's formula gives peft's weight
exactly. (AUTOMATIC1111 1.10 normalises per input column, LyCORIS' older form: no per-output
scale renders right there; see the README.)

The header carries what kohya and LyCORIS write and the LoRA browsers read: above all
`ss_base_model_version`, without which A1111 files an SDXL LoRA as SD1 and hides it.
"""

from __future__ import annotations

import json

# peft's tensor names and kohya's for the same tensor.
TENSORS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "lora_magnitude_vector": "dora_scale"}
# Each family's key prefixes, `ss_base_model_version` (as A1111's Lora tab reads it) and the SAI
# model spec's architecture id are the family's (`models.families`); FLUX.2's names are BFL's own
# (`flux2_state_dict`).


def state_dict(layers: dict[str, dict], prefixes: dict, rank: int, modules: dict, dtype) -> dict:
    """A Stable Diffusion kohya file's tensors from `lora.lora_layers` (scale folded into B, so
    alpha = rank), in `dtype`, each module's key `<prefix of its component>_<module path with _>`.
    `modules` ({component: the model that carries the adapters}) give DoRA its base W."""
    import torch

    out = {}
    for component, state in layers.items():
        for key, value in state.items():
            module, tensor = _split_tensor_name(key)
            stem = f"{prefixes[component]}_{module.replace('.', '_')}"
            if tensor == "lora_magnitude_vector":
                up, down = state[f"{module}.lora_B.weight"], state[f"{module}.lora_A.weight"]
                # dW as a reader of this file gets it back, rounded to `dtype`: the scale then makes
                # up for that rounding too.
                delta = up.to(dtype).float() @ down.to(dtype).float()
                value = comfy_dora_scale(value, _base_weight(modules[component], module), delta)
            out[f"{stem}.{TENSORS[tensor]}"] = value.to(dtype).contiguous()
            out[f"{stem}.alpha"] = torch.tensor(float(rank), dtype=dtype)
    return out


# diffusers' module names in FLUX.2's transformer -> the checkpoint's: BFL's checkpoint fuses each
# stream's q, k and v into one `qkv` matrix, and the single blocks' fused projections are linear1/linear2.
FLUX2_FUSED = {"to_q": ("img_attn_qkv", 0), "to_k": ("img_attn_qkv", 1), "to_v": ("img_attn_qkv", 2),
               "add_q_proj": ("txt_attn_qkv", 0), "add_k_proj": ("txt_attn_qkv", 1), "add_v_proj": ("txt_attn_qkv", 2)}
FLUX2_SINGLE = {"to_out.0": "img_attn_proj", "to_add_out": "txt_attn_proj",  # and the MLPs of --targets attention+mlp
                "ff.linear_in": "img_mlp_0", "ff.linear_out": "img_mlp_2", "ff_context.linear_in": "txt_mlp_0",
                "ff_context.linear_out": "txt_mlp_2"}
FLUX2_SINGLE_BLOCK = {"to_qkv_mlp_proj": "linear1", "to_out": "linear2"}


def flux2_state_dict(state: dict, dtype) -> dict:
    """FLUX.2's kohya tensors from its peft state dict (scale folded into B).

    A fused `qkv` weight gets one LoRA whose update is the three separate ones side by side:
    down = [A_q; A_k; A_v] (rank 3r) and up = the block-diagonal of B_q, B_k, B_v, so that
    up @ down stacks B_q A_q, B_k A_k, B_v A_v exactly (diffusers splits it back the same way)."""
    import torch

    out, fused = {}, {}
    for key in state:
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise ValueError(f"not a LoRA tensor this module knows how to name in the kohya format: {key}")
            continue
        module = key[: -len(".lora_A.weight")]
        down, up = state[key], state[f"{module}.lora_B.weight"]
        blocks, index, rest = module.split(".", 2)
        name = rest.removeprefix("attn.")
        if blocks == "single_transformer_blocks":
            out[f"lora_unet_single_blocks_{index}_{FLUX2_SINGLE_BLOCK[name]}"] = (down, up)
        elif name in FLUX2_SINGLE:
            out[f"lora_unet_double_blocks_{index}_{FLUX2_SINGLE[name]}"] = (down, up)
        else:
            target, part = FLUX2_FUSED[name]
            fused.setdefault(f"lora_unet_double_blocks_{index}_{target}", {})[part] = (down, up)
    for stem, parts in fused.items():
        if sorted(parts) != [0, 1, 2]:  # a fused weight is adapted whole or not at all
            raise ValueError(f"{stem}: q, k and v must all carry a LoRA to be written as one fused qkv LoRA")
        downs, ups = zip(*(parts[i] for i in range(3)))
        out[stem] = (torch.cat(downs), torch.block_diag(*ups))
    tensors = {}
    for stem, (down, up) in out.items():
        tensors[f"{stem}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{stem}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(down.shape[0]), dtype=dtype)  # alpha = its rank: scale 1
    return tensors


def comfy_dora_scale(magnitude, weight, delta):
    """(out, 1): m * ||W|| / ||W + dW|| per output row, in fp32."""
    weight = weight.float()
    return (magnitude.float() * weight.norm(dim=1) / (weight + delta).norm(dim=1)).reshape(-1, 1)


def _base_weight(model, module: str):
    """The frozen W under the adapter at `module` (a canonical name: transformers 5's CLIPTextModel
    has no `text_model.` level)."""
    try:
        layer = model.get_submodule(module)
    except AttributeError:
        layer = model.get_submodule(module.removeprefix("text_model."))
    return layer.base_layer.weight.detach()


def _split_tensor_name(key: str) -> tuple[str, str]:
    """"a.b.lora_A.weight" -> ("a.b", "lora_A.weight")."""
    for tensor in TENSORS:
        if key.endswith("." + tensor):
            return key[: -len(tensor) - 1], tensor
    raise ValueError(f"not a LoRA tensor this module knows how to name in the kohya format: {key}")


def header(name: str, family, rank: int, dora: bool, run: dict | None = None, facts: dict | None = None) -> dict[str, str]:
    """The safetensors metadata kohya's scripts write (LyCORIS' module and arguments for DoRA), plus
    the SAI model spec's title and trigger phrase, for `family` (a `models.families.Family`): its
    `base_model_version` and `modelspec_architecture`. `run` is the run's config.json; `facts` what it
    resolved to: `resolution`, `images`, `trigger` (token and class word), `tags` (caption tag
    counts), `model_name` and `model_sha256` of the base checkpoint."""
    meta = {
        "ss_output_name": name,
        "ss_base_model_version": family.base_model_version,
        "ss_v2": "False",
        "ss_network_module": "lycoris.kohya" if dora else "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),  # alpha / rank is folded into the up weights
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture,
        "modelspec.title": name,
    }
    if dora:  # how LyCORIS records a DoRA LoRA (`--network_args algo=lora dora_wd=True`)
        meta["ss_network_args"] = json.dumps({"algo": "lora", "dora_wd": "True"})
    if run is not None:
        settings = run["settings"]
        meta.update({"ss_steps": str(settings["steps"]), "ss_max_train_steps": str(settings["steps"]),
                     "ss_learning_rate": str(settings["lr"]), "ss_unet_lr": str(settings["lr"]), "ss_seed": str(settings["seed"])})
        if settings["train_text_encoder"]:
            meta["ss_text_encoder_lr"] = str(settings["text_encoder_lr"])
    facts = {key: value for key, value in (facts or {}).items() if value is not None}
    if "resolution" in facts:
        size = facts["resolution"]
        meta.update({"ss_resolution": f"({size}, {size})", "modelspec.resolution": f"{size}x{size}"})
    if "images" in facts:
        meta["ss_num_train_images"] = str(facts["images"])
    if "tags" in facts:
        meta["ss_tag_frequency"] = json.dumps({"dataset": facts["tags"]}, ensure_ascii=False)
    if "trigger" in facts:
        meta["modelspec.trigger_phrase"] = facts["trigger"]
    if "model_name" in facts:
        meta["ss_sd_model_name"] = facts["model_name"]
    if "model_sha256" in facts:
        meta["ss_new_sd_model_hash"] = facts["model_sha256"]
    return meta


def tag_frequency(captions: list[str]) -> dict[str, int]:
    """kohya's `ss_tag_frequency` for one dataset: each comma-separated caption part, counted (the
    "training tags" A1111's Lora card lists)."""
    counts: dict[str, int] = {}
    for caption in captions:
        for tag in (part.strip() for part in caption.split(",")):
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return counts
