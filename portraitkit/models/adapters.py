"""peft's LoRA adapters on a model's layers: the one way every family adds them (`Family.add_lora`)."""

from __future__ import annotations

# A CLIP text encoder's attention projections, adapted when --train-text-encoder asks for it.
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


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
