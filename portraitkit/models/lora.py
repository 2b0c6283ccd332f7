"""The LoRA adapter itself: where it goes, how it is added, the two files it is saved as.

LoRA (Hu et al. 2021) learns a low-rank update B @ A beside each frozen weight W of the
attention projections; only A and B train. The adapters are peft's, added the way diffusers
adds them, so every loader that reads diffusers' LoRA files reads ours. Two files are written:
- `pytorch_lora_weights.safetensors`, diffusers' format (`pipeline.load_lora_weights(folder,
  weight_name=LORA_FILE)`);
- `pytorch_lora_weights_kohya.safetensors`, the kohya format AUTOMATIC1111 and ComfyUI read.

Both files name modules by the architecture, not by whatever the installed transformers calls
them: transformers 5's `CLIPTextModel` dropped the `text_model.` level that every other tool
(and transformers 4) has, so it is put back (`canonical_name`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from portraitkit.core.files import atomic_path

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
# The attention projections: what person-LoRA recipes (diffusers, kohya) adapt by default.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# kohya's name for each component, by family: SD1.x tools call the single text encoder `te`.
KOHYA_PREFIXES = {"sd": {"unet": "lora_unet", "text_encoder": "lora_te"},
                  "sdxl": {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}}
# peft's tensor names and kohya's for the same tensor. DoRA's magnitude (one per output row) is
# `dora_scale` of shape (out, 1) there: ComfyUI tells a per-output magnitude from a per-input one
# by its first dimension. diffusers reads such a file too, but its SD1.x / SDXL loaders leave
# `dora_scale` out (with a warning): in diffusers, load the diffusers-format file, which keeps them.
KOHYA_TENSORS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight", "lora_magnitude_vector": "dora_scale"}


def text_encoders(pipe) -> list:
    """The pipeline's text encoders: one for SD1.x, two for SDXL."""
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def family(pipe) -> str:
    return "sdxl" if getattr(pipe, "text_encoder_2", None) is not None else "sd"


def text_encoder_targets(encoder, skip_last_layer: bool) -> list[str]:
    """The full names of `encoder`'s attention projections that can learn.

    SDXL conditions on text encoder 1's penultimate hidden state (`hidden_states[-2]`), and its
    pooled text comes from encoder 2: encoder 1's last layer never reaches the UNet, so a LoRA
    there would get no gradient and ship as dead weight. `skip_last_layer` leaves it out.
    """
    last = f"layers.{encoder.config.num_hidden_layers - 1}."
    return [name for name, _ in encoder.named_modules()
            if name.rsplit(".", 1)[-1] in TEXT_ENCODER_TARGETS and not (skip_last_layer and last in name)]


def add_adapters(module, rank: int, targets: list[str], alpha: float | None = None, use_dora: bool = False) -> list:
    """Put LoRA adapters on `module`'s `targets` and return the parameters that train (in fp32).

    Gaussian init (B = 0) makes the LoRA a no-op at first: training starts from the base model.
    `use_dora`: DoRA (Liu et al. 2024, peft's `use_dora`) adds a magnitude per output row of each
    weight, initialised to the row norms of W, so it too starts as a no-op.
    """
    import torch
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=targets,
                        use_dora=use_dora)
    if hasattr(module, "add_adapter") and not type(module).__name__.startswith("CLIP"):
        module.add_adapter(config)  # diffusers' models
    else:  # peft directly: transformers 5's own `add_adapter` demands a newer peft than exists
        inject_adapter_in_model(config, module)
    # fp16 master weights lose small updates (lr 1e-4 x grad underflows): train LoRA in fp32.
    cast_training_params(module, torch.float32)
    return [p for p in module.parameters() if p.requires_grad]


def add_to_pipeline(pipe, rank: int, alpha: float | None, train_text_encoder: bool, use_dora: bool = False) -> dict:
    """Freeze the base and attach adapters to its UNet (and text encoders); return {name: module that trains}."""
    for module in [pipe.unet, pipe.vae, *text_encoders(pipe)]:
        module.requires_grad_(False)
    add_adapters(pipe.unet, rank, UNET_TARGETS, alpha, use_dora)
    modules = {"unet": pipe.unet}
    if train_text_encoder:
        sdxl = family(pipe) == "sdxl"
        for name, encoder in zip(["text_encoder", "text_encoder_2"], text_encoders(pipe)):
            add_adapters(encoder, rank, text_encoder_targets(encoder, skip_last_layer=sdxl and name == "text_encoder"), alpha, use_dora)
            modules[name] = encoder
    return modules


def canonical_name(component: str, name: str) -> str:
    """A module's name as the architecture has it: CLIP text models with their `text_model.` level."""
    if component.startswith("text_encoder") and not name.startswith("text_model."):
        return f"text_model.{name}"
    return name


def lora_layers(pipe, scale: float, train_text_encoder: bool) -> dict[str, dict]:
    """{component: {canonical module name + ".lora_A.weight" / ".lora_B.weight": tensor}}, the
    peft state dicts with the LoRA scale alpha / rank folded into B."""
    from peft.utils import get_peft_model_state_dict

    modules = {"unet": pipe.unet}
    if train_text_encoder:
        modules.update(zip(["text_encoder", "text_encoder_2"], text_encoders(pipe)))
    layers = {}
    for component, module in modules.items():
        state = get_peft_model_state_dict(module)
        layers[component] = {canonical_name(component, key): (value * scale if ".lora_B." in key else value)
                             for key, value in state.items()}
    return layers


def save(pipe, folder: Path, rank: int, alpha: float | None, train_text_encoder: bool) -> Path:
    """Write the LoRA in the diffusers format, then the same weights in the kohya format."""
    from safetensors.torch import save_file

    folder = Path(folder)
    # The diffusers format stores no alpha (loaders take alpha = rank), so the scale alpha / rank
    # is folded into the B ("up") matrices: both files then apply exactly the trained update.
    layers = lora_layers(pipe, (alpha or rank) / rank, train_text_encoder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".lora-") as tmp:
        type(pipe).save_lora_weights(tmp, **diffusers_layers(layers), safe_serialization=True)
        Path(tmp, LORA_FILE).replace(folder / LORA_FILE)
    with atomic_path(folder / KOHYA_FILE) as tmp:
        save_file(kohya_state_dict(layers, family(pipe), rank), tmp,
                  metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(float(rank))})
    return folder / LORA_FILE


def diffusers_layers(layers: dict[str, dict]) -> dict:
    """`save_lora_weights`' keyword arguments, each component's layers in diffusers' naming."""
    from diffusers.utils import convert_state_dict_to_diffusers

    return {f"{component}_lora_layers": convert_state_dict_to_diffusers(state) for component, state in layers.items()}


def kohya_state_dict(layers: dict[str, dict], family_name: str, rank: int) -> dict:
    """The kohya file's tensors: `<prefix>_<module path with _>.lora_down.weight`, `.lora_up.weight`
    and `.alpha` per module. Alpha is the rank, as the scale is folded into the weights already."""
    import torch

    prefixes = KOHYA_PREFIXES[family_name]
    out = {}
    for component, state in layers.items():
        for key, value in state.items():
            module, tensor = _split_tensor_name(key)
            stem = f"{prefixes[component]}_{module.replace('.', '_')}"
            out[f"{stem}.{KOHYA_TENSORS[tensor]}"] = (value.reshape(-1, 1) if tensor == "lora_magnitude_vector" else value).contiguous()
            out[f"{stem}.alpha"] = torch.tensor(float(rank))
    return out


def _split_tensor_name(key: str) -> tuple[str, str]:
    """"a.b.lora_A.weight" -> ("a.b", "lora_A.weight")."""
    for tensor in KOHYA_TENSORS:
        if key.endswith("." + tensor):
            return key[: -len(tensor) - 1], tensor
    raise ValueError(f"not a LoRA tensor this module knows how to name in the kohya format: {key}")


def load(pipe, folder: Path, adapter_name: str | None = None, weight_name: str = LORA_FILE) -> None:
    """Load a run's LoRA (diffusers format by default) into a pipeline, as any diffusers user would.

    The file is read here and its tensors handed to `load_lora_weights`: diffusers before 0.40
    (Colab has 0.39) puts the standard `text_encoder.text_model.` keys into transformers 5's
    `CLIPTextModel` without stripping the level it lacks, and fails; the level is dropped here for
    an encoder that has none. (Reading the file ourselves also spares diffusers up to 0.39 its
    offline-mode error for a folder given without `weight_name`.)"""
    from safetensors.torch import load_file

    state = load_file(Path(folder) / weight_name)
    for component, encoder in zip(["text_encoder", "text_encoder_2"], text_encoders(pipe)):
        if not hasattr(encoder, "text_model"):
            level = f"{component}.text_model."
            state = {(f"{component}." + key[len(level):] if key.startswith(level) else key): value for key, value in state.items()}
    pipe.load_lora_weights(state, adapter_name=adapter_name)
