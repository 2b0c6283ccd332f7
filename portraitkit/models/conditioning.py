"""What the UNet is conditioned on besides the noisy latents: the text embeddings, and for SDXL
its pooled text embedding and the size/crop ids. Training, validation, sampling and the planner's
tracer build these the same way; validation and sampling both encode their prompts first (the
family's `prompt_embeddings`) and then denoise with a pipeline that has no text encoders
(`without_text_encoders`).

SDXL's six size ids are (original height, width, crop top, left, target height, width). For a
face crop portraitkit uses the convention for a picture that is shown whole: the original size
is the crop's own size in its photo's pixels (so a small crop, upscaled, is said to be small),
the crop corner (0, 0) and the target the training size. Sampling asks for the same: a picture
made at its own size, uncropped, which is also what diffusers' SDXL pipeline asks by default.
"""

from __future__ import annotations


def sdxl_time_ids(original_size, resolution: int) -> list[int]:
    """One image's size ids: `original_size` (height, width), crop (0, 0), target `resolution` square."""
    height, width = original_size
    return [int(height), int(width), 0, 0, resolution, resolution]


def sampling_sizes(resolution: int) -> dict:
    """The SDXL pipeline's size arguments for a `resolution` portrait, in the training convention."""
    return {"original_size": (resolution, resolution), "crops_coords_top_left": (0, 0), "target_size": (resolution, resolution)}


def unet_conditioning(cond: dict, resolution: int, dtype) -> dict:
    """UNet keyword arguments from text embeddings; SDXL adds its pooled text and size/crop ids
    (each example's own from `cond["time_ids"]`, else made at the training size)."""
    import torch

    kwargs = {"encoder_hidden_states": cond["embeds"].to(dtype)}
    if "pooled" in cond:
        pooled = cond["pooled"].to(dtype)
        time_ids = cond.get("time_ids")
        if time_ids is None:
            time_ids = torch.tensor([sdxl_time_ids((resolution, resolution), resolution)]).repeat(len(pooled), 1)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device, dtype)}
    return kwargs


def without_text_encoders(pipe, scheduler=None):
    """The same pipeline (shared modules, nothing copied) without its text encoders, for a call
    given prompt embeddings, with `scheduler` in place of the base's. Diffusers releases before
    late 2026 take a pipeline's device from its alphabetically first model, the text encoder:
    left on the CPU, it would pull the whole call there. Without it, that is the UNet's device."""
    drop = {name: None for name in ("text_encoder", "text_encoder_2") if name in pipe.components}
    if "safety_checker" in pipe.components:  # SD1.x: portraits of the user, as load_pipeline says
        drop["requires_safety_checker"] = False
    if scheduler is not None:
        drop["scheduler"] = scheduler
    denoiser = type(pipe)(**{**pipe.components, **drop})
    denoiser.set_progress_bar_config(disable=True)
    return denoiser
