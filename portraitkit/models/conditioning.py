"""What the UNet is conditioned on besides the noisy latents: the text embeddings, and for SDXL
its pooled text embedding and the size/crop ids. Training, validation and the planner's tracer
build these keyword arguments the same way."""

from __future__ import annotations


def unet_conditioning(cond: dict, resolution: int, dtype) -> dict:
    """UNet keyword arguments from text embeddings; SDXL adds its pooled text and size/crop ids
    (each example's own from `cond["time_ids"]`, else square and uncropped)."""
    import torch

    kwargs = {"encoder_hidden_states": cond["embeds"].to(dtype)}
    if "pooled" in cond:
        pooled = cond["pooled"].to(dtype)
        time_ids = cond.get("time_ids")
        if time_ids is None:
            time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]]).repeat(len(pooled), 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device, dtype)}
    return kwargs
