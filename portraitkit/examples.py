"""The training examples as the UNet sees them: the prepared photos and their captions, encoded once.

`prep` writes a dataset in `datasets`' imagefolder layout (images plus metadata.jsonl); it is read
here with `datasets` itself, the way any Hugging Face training script reads it. Training never runs
the VAE or the text encoders in its loop: every image becomes VAE latents and every caption a text
embedding once, before the first step (unless the text encoder trains, when captions are encoded
each step, with gradients); prep's face masks, for the masked loss, are brought to latent
resolution beside the latents.
"""

from __future__ import annotations

from pathlib import Path

from portraitkit.errors import PortraitkitError
from portraitkit.files import save_image


def load_examples(dataset_dir: str) -> list[dict]:
    """The dataset as a list of {"image": PIL image, "text": caption}, read by `datasets`' imagefolder,
    with "mask" (prep's face-and-hair mask, `mask_file_name` in metadata.jsonl) where the dataset has one."""
    folder = Path(dataset_dir)
    if not (folder / "metadata.jsonl").is_file():
        raise PortraitkitError(f"{folder} has no metadata.jsonl; prepare your photos first with `portraitkit prep PHOTOS --out {folder}`")
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(folder), split="train")
    if "text" not in dataset.column_names:
        raise PortraitkitError(f"{folder}/metadata.jsonl must give each image a `text` caption (portraitkit prep writes them)")
    if len(dataset) == 0:
        raise PortraitkitError(f"{folder} holds no images")
    return [{"image": row["image"].convert("RGB"), "text": row["text"],
             **({"mask": row["mask"].convert("L")} if row.get("mask") is not None else {})} for row in dataset]


def image_to_tensor(image, resolution: int):
    """Resize the short side to `resolution` (Lanczos), centre-crop square, scale to [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image

    scale = resolution / min(image.size)
    if scale != 1:
        image = image.resize((max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))), Image.LANCZOS)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


def encode_images(pipe, images: list, resolution: int):
    """VAE latents (the distribution's mean, scaled), one image at a time to bound memory."""
    import torch

    vae = pipe.vae
    # SDXL's VAE overflows to NaN in fp16 (its config says force_upcast): encode in fp32, once.
    upcast = vae.dtype == torch.float16 and vae.config.get("force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    vae.to(dtype=dtype)
    latents = []
    with torch.no_grad():
        for image in images:
            pixels = image_to_tensor(image, resolution)[None].to(vae.device, dtype)
            latents.append(vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor)
    if upcast:
        vae.to(dtype=torch.float16)
    return torch.cat(latents).float()


def encode_text(pipe, captions: list[str], device) -> dict:
    """Prompt embeddings the UNet is conditioned on (plus SDXL's pooled embedding)."""
    if hasattr(pipe, "text_encoder_2"):
        embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}
    embeds, _ = pipe.encode_prompt(captions, device, 1, False)
    return {"embeds": embeds}


def encode_examples(pipe, examples: list[dict], resolution: int, with_text: bool, bare: bool = False,
                    masks: bool = False) -> dict:
    """{"latents", "embeds" (and SDXL's "pooled") when `with_text`}; with `bare` also each caption's
    bare trigger phrase encoded ("bare_embeds", "bare_pooled": caption dropout), with `masks` the
    masks at latent resolution ("masks": the masked loss)."""
    import torch

    from portraitkit.objective import bare_caption

    cache = {"latents": encode_images(pipe, [e["image"] for e in examples], resolution)}
    if with_text:
        with torch.no_grad():
            text = encode_text(pipe, [e["text"] for e in examples], pipe.text_encoder.device)
            cache.update({key: value.float() for key, value in text.items()})
            if bare:
                text = encode_text(pipe, [bare_caption(e["text"]) for e in examples], pipe.text_encoder.device)
                cache.update({f"bare_{key}": value.float() for key, value in text.items()})
    if masks:
        cache["masks"] = latent_masks(examples, resolution, cache["latents"].shape[-1])
    return cache


def require_masks(examples: list[dict]) -> None:
    """Refuse, in one sentence, a dataset without prep's masks: never a silent plain loss."""
    if not all("mask" in e for e in examples):
        raise PortraitkitError("this dataset has no face masks (masks/ and mask_file_name in metadata.jsonl), which "
                               "--masked-loss needs: prepare it again with `portraitkit prep PHOTOS --out DATASET`, "
                               "or train without --masked-loss")


def latent_masks(examples: list[dict], resolution: int, latent_size: int):
    """Each example's mask, cropped as its image is, at latent resolution (`objective.latent_mask`)."""
    import torch

    from portraitkit.objective import latent_mask

    require_masks(examples)
    pixels = torch.stack([image_to_tensor(e["mask"].convert("RGB"), resolution)[:1] for e in examples])
    return latent_mask((pixels + 1) / 2 > 0.5, latent_size)


def unet_conditioning(cond: dict, resolution: int, dtype) -> dict:
    """UNet keyword arguments from text embeddings; SDXL adds its pooled text and size/crop ids."""
    import torch

    kwargs = {"encoder_hidden_states": cond["embeds"].to(dtype)}
    if "pooled" in cond:  # original size, crop corner and target size: square crops, uncropped
        pooled = cond["pooled"].to(dtype)
        time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], device=pooled.device, dtype=dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.repeat(len(pooled), 1)}
    return kwargs


# --- prior preservation -----------------------------------------------------------------------


def class_examples(pipe, placement, folder: str, prompt: str, count: int, seed: int, steps: int, resolution: int) -> list[dict]:
    """Class images for prior preservation (DreamBooth, Ruiz et al. 2022): `count` images of
    `prompt` from `folder`, the missing ones generated by the base model itself."""
    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    missing = range(len(existing), count)
    if missing:
        with placement.on("unet", "vae", "text_encoder", "text_encoder_2"):  # the whole pipeline generates
            for index in tqdm(missing, desc="class images", unit="img"):
                generator = torch.Generator().manual_seed(seed + index)
                image = pipe(prompt, height=resolution, width=resolution, num_inference_steps=steps, generator=generator).images[0]
                existing.append(save_image(folder / f"class_{index:04d}.png", image))
    return [{"image": Image.open(p).convert("RGB"), "text": prompt} for p in existing[:count]]
