"""The LoRA adapter itself: where it goes, how it is added, the two files it is saved as.

LoRA (Hu et al. 2021) learns a low-rank update B @ A beside each frozen weight W of the
attention projections; only A and B train. The adapters are peft's, added the way diffusers
adds them, so every loader that reads diffusers' LoRA files reads ours. Two files are written:
- `pytorch_lora_weights.safetensors`, diffusers' format (`pipeline.load_lora_weights(folder)`);
- `pytorch_lora_weights_kohya.safetensors`, the kohya format AUTOMATIC1111 and ComfyUI read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from portraitkit.files import atomic_path

LORA_FILE = "pytorch_lora_weights.safetensors"
KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
# The attention projections: what person-LoRA recipes (diffusers, kohya) adapt by default.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def text_encoders(pipe) -> list:
    """The pipeline's text encoders: one for SD1.x, two for SDXL."""
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def add_adapters(module, rank: int, targets: list[str], alpha: float | None = None, use_dora: bool = False) -> list:
    """Put LoRA adapters on `module`'s `targets` and return the parameters that train (in fp32).

    Gaussian init (B = 0) makes the LoRA a no-op at first: training starts from the base model.
    `use_dora`: DoRA (Liu et al. 2024, peft's `use_dora`) adds a magnitude per output row of each
    weight, initialised to the row norms of W, so it too starts as a no-op.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=targets,
                        use_dora=use_dora)
    if hasattr(module, "add_adapter") and not type(module).__name__.startswith("CLIP"):
        module.add_adapter(config)  # diffusers' models
    else:  # peft directly: transformers 5's own `add_adapter` demands a newer peft than exists
        inject_adapter_in_model(config, module)
    trainable = [p for p in module.parameters() if p.requires_grad]
    # fp16 master weights lose small updates (lr 1e-4 x grad underflows): train LoRA in fp32.
    for parameter in trainable:
        parameter.data = parameter.data.float()
    return trainable


def add_to_pipeline(pipe, rank: int, alpha: float | None, train_text_encoder: bool, use_dora: bool = False) -> dict:
    """Freeze the base and attach adapters to its UNet (and text encoders); return {name: module that trains}."""
    for module in [pipe.unet, pipe.vae, *text_encoders(pipe)]:
        module.requires_grad_(False)
    add_adapters(pipe.unet, rank, UNET_TARGETS, alpha, use_dora)
    modules = {"unet": pipe.unet}
    if train_text_encoder:
        for name, encoder in zip(["text_encoder", "text_encoder_2"], text_encoders(pipe)):
            add_adapters(encoder, rank, TEXT_ENCODER_TARGETS, alpha, use_dora)
            modules[name] = encoder
    return modules


def save(pipe, folder: Path, rank: int, alpha: float | None, train_text_encoder: bool) -> Path:
    """Write the LoRA in the diffusers format, then the same weights in the kohya format."""
    from diffusers.utils import convert_all_state_dict_to_peft, convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    # The diffusers format stores no alpha (loaders take alpha = rank), so the scale alpha / rank
    # is folded into the B ("up") matrices: both files then apply exactly the trained update.
    scale = (alpha or rank) / rank

    def lora_layers(module) -> dict:
        state = {k: (v * scale if "lora_B" in k else v) for k, v in get_peft_model_state_dict(module).items()}
        return convert_state_dict_to_diffusers(state)

    layers = {"unet_lora_layers": lora_layers(pipe.unet)}
    if train_text_encoder:
        for key, encoder in zip(["text_encoder_lora_layers", "text_encoder_2_lora_layers"], text_encoders(pipe)):
            layers[key] = lora_layers(encoder)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".lora-") as tmp:
        type(pipe).save_lora_weights(tmp, **layers, safe_serialization=True)
        Path(tmp, LORA_FILE).replace(folder / LORA_FILE)

    kohya = convert_state_dict_to_kohya(convert_all_state_dict_to_peft(load_file(folder / LORA_FILE)))
    kohya_alpha = float(rank)  # the scale is in the weights already
    kohya = {key: (_scalar(kohya_alpha) if key.endswith(".alpha") else value) for key, value in kohya.items()}
    kohya = kohya_dora_scales(kohya)
    if not hasattr(pipe, "text_encoder_2"):  # SD1.x tools name the single text encoder lora_te_
        kohya = {key.replace("lora_te1_", "lora_te_"): value for key, value in kohya.items()}
    with atomic_path(folder / KOHYA_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in kohya.items()}, tmp,
                  metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(kohya_alpha)})
    return folder / LORA_FILE


def kohya_dora_scales(kohya: dict) -> dict:
    """DoRA's magnitudes under the name and shape kohya-format readers (ComfyUI) expect:
    `<module>.dora_scale`, one per output row, shape (out, 1).

    diffusers' kohya converter leaves peft's `lora_magnitude_vector` half-renamed; ComfyUI tells
    a per-output magnitude from a per-input one by its first dimension, so (out, 1) it must be.
    diffusers reads such a file too, but its SD1.x / SDXL loaders leave `dora_scale` out (with a
    warning): in diffusers, load the diffusers-format file, which keeps the magnitudes.
    """
    suffix = ".lora_magnitude_vector"
    return {(key[: -len(suffix)].replace(".", "_") + ".dora_scale" if key.endswith(suffix) else key):
            (value.reshape(-1, 1) if key.endswith(suffix) else value) for key, value in kohya.items()}


def load(pipe, folder: Path, adapter_name: str | None = None) -> None:
    """Load a run's LoRA (diffusers format) into a pipeline, as any diffusers user would.

    The file is named: diffusers up to 0.39 (Colab's) refuses a folder without `weight_name`
    in offline mode."""
    pipe.load_lora_weights(str(folder), weight_name=LORA_FILE, adapter_name=adapter_name)


def _scalar(value: float):
    import torch

    return torch.tensor(value)
