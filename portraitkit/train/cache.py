"""The training examples as the UNet sees them: the prepared photos and their captions, encoded once.

`prep` writes a dataset in `datasets`' imagefolder layout (images plus metadata.jsonl); it is read
here with `datasets` itself, the way any Hugging Face training script reads it. Training never runs
the VAE or the text encoders in its loop: every image becomes VAE latents and every caption a text
embedding once, before the first step (unless the text encoder trains, when captions are encoded
each step, with gradients); prep's face masks, for the masked loss, are brought to latent
resolution beside the latents.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import dataset_rows, save_image
from portraitkit.models import families


def check_dataset(dataset_dir: str) -> Path:
    """The folder, if prep made it and found it big enough; a raw photo folder gets the prep command to run."""
    from portraitkit.faces.photos import PHOTO_SUFFIXES

    folder = Path(dataset_dir)
    if not folder.is_dir():
        raise PortraitkitError(f"there is no folder {folder}: pass the --out folder of `portraitkit prep`")
    if not (folder / "metadata.jsonl").is_file():
        if any(path.suffix.lower() in PHOTO_SUFFIXES for path in folder.iterdir()):
            dataset = folder.resolve().parent / f"{folder.resolve().name}-dataset"
            raise PortraitkitError(f"{folder} holds photos, not a prepared dataset: run `portraitkit prep {folder} --out {dataset}` "
                                   "first, then train on that folder")
        raise PortraitkitError(f"{folder} is not a prepared dataset (it has no metadata.jsonl): prepare your photos first "
                               f"with `portraitkit prep PHOTOS --out {folder}`")
    dataset_rows(folder)  # every image it names inside it, before anything reads them
    report = folder / "report.json"
    if report.is_file():
        summary = json.loads(report.read_text(encoding="utf-8")).get("summary", {})
        if summary.get("enough_to_train") is False:
            raise PortraitkitError(f"prep found too few usable photos in {folder} to train on. {summary.get('message', '')}".strip())
    return folder


def load_examples(dataset_dir: str) -> list[dict]:
    """The dataset as a list of {"image": PIL image, "text": caption, "original_size", "crop_top_left"},
    read by `datasets`' imagefolder, with "mask" (prep's face-and-hair mask, `mask_file_name` in
    metadata.jsonl) where the dataset has one. "original_size" and "crop_top_left" are SDXL's size
    and crop conditioning as prep recorded them (`prep.crops.size_conditioning`); None for datasets
    without them."""
    folder = check_dataset(dataset_dir)
    from datasets import load_dataset

    from portraitkit.core.offline import local_datasets

    # The images metadata.jsonl names, and it, as the data files: datasets before 3.4 refuse a
    # folder holding any other image (prep's contact_sheet.png) that has no row there.
    names = [str(row.get("file_name", "")) for row in dataset_rows(folder)]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise PortraitkitError(f"{folder}/metadata.jsonl names {len(missing)} image(s) that are not there, e.g. {missing[0]}; "
                               f"prepare the photos again with `portraitkit prep PHOTOS --out {folder}`")
    files = [str(folder / "metadata.jsonl"), *(str(folder / name) for name in names)]
    # datasets' "Generating train split" bars describe its cache, not the learner's photos: off
    # for this call only, and left as the caller had them.
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with local_datasets():  # a local folder: no download counter's request to s3.amazonaws.com
            dataset = load_dataset("imagefolder", data_files={"train": files}, split="train")
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    if "text" not in dataset.column_names:
        raise PortraitkitError(f"{folder}/metadata.jsonl must give each image a `text` caption (portraitkit prep writes them)")
    if len(dataset) == 0:
        raise PortraitkitError(f"{folder} holds no images")
    # datasets keeps the order of the files it is given: the names line up with the rows
    return [{"image": row["image"].convert("RGB"), "text": row["text"], "file_name": name, "original_size": row.get("original_size"),
             "crop_top_left": row.get("crop_top_left"),
             **({"mask": row["mask"].convert("L")} if row.get("mask") is not None else {})} for name, row in zip(names, dataset)]


def split_holdout(examples: list[dict], count: int) -> tuple[list[dict], list[dict]]:
    """(training examples, held-out examples): `count` photos kept out of training, chosen for
    variety by farthest-point sampling on their face embeddings: first the face farthest from the
    centre of all, then each time the face farthest from those already chosen. So the held-out
    photos span the person's looks (light, angle, expression) instead of repeating one."""
    if count == 0:
        return examples, []
    if count > len(examples) - 2:
        raise PortraitkitError(f"--holdout {count} would leave {len(examples) - count} of the {len(examples)} photos to train on: "
                               f"hold out at most {max(0, len(examples) - 2)} (a LoRA needs several photos of the person)")
    import numpy as np

    from portraitkit.faces.detect import detect_faces, face_embedding

    with_face, embeddings = [], []
    for index, example in enumerate(examples):
        found = detect_faces(example["image"])
        if found:
            with_face.append(index)
            embeddings.append(face_embedding(example["image"], found[0]))
    if len(with_face) < count:
        raise PortraitkitError(f"--holdout {count}: only {len(with_face)} of the photos show a face the likeness can be measured on; "
                               f"hold out at most {len(with_face)}")
    embeddings = np.array(embeddings)
    chosen = [int(np.argmax(np.linalg.norm(embeddings - embeddings.mean(axis=0), axis=1)))]
    while len(chosen) < count:
        nearest = np.min([np.linalg.norm(embeddings - embeddings[c], axis=1) for c in chosen], axis=0)
        nearest[chosen] = -1  # ties among the rest go to the first photo: the choice never depends on luck
        chosen.append(int(np.argmax(nearest)))
    held_out = [with_face[c] for c in chosen]
    return [e for i, e in enumerate(examples) if i not in held_out], [examples[i] for i in held_out]


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
    """VAE latents (the distribution's mean, scaled), one image at a time to bound memory.

    Always in fp32, whatever the weights' precision: the cache is encoded once, so this costs
    seconds, while SDXL's VAE overflows to NaN in fp16 and bf16 (L4, A100) keeps 3 significant
    digits of every latent the whole run trains on (diffusers' SDXL scripts keep the VAE in fp32)."""
    import torch

    # SD: the scaled mean; FLUX.2: patched and normalised by its VAE's batch-norm statistics (`klein`)
    encode = families.of(pipe).encode_latents
    vae = pipe.vae
    dtype = vae.dtype
    if dtype != torch.float32:  # diffusers warns on every cast, also when no module must stay fp32: cast only when needed
        vae.to(dtype=torch.float32)
    latents = []
    try:
        with torch.no_grad():
            for image in images:
                pixels = image_to_tensor(image, resolution)[None].to(vae.device, torch.float32)
                latents.append(encode(vae, pixels))
    finally:
        if dtype != torch.float32:
            vae.to(dtype=dtype)
    return torch.cat(latents)


def encode_text(pipe, captions: list[str], device) -> dict:
    """Prompt embeddings the UNet or transformer is conditioned on (plus SDXL's pooled embedding)."""
    return families.of(pipe).encode_text(pipe, captions, device)


def encode_examples(pipe, examples: list[dict], resolution: int, encode_captions: bool, bare: bool = False,
                    masks: bool = False, class_prompt: str | None = None) -> dict:
    """{"latents", "embeds" (and SDXL's "pooled") when `encode_captions`}; with `bare` also each caption's
    bare trigger phrase encoded ("bare_embeds", "bare_pooled": caption dropout), with `class_prompt`
    each class caption ("class_embeds", "class_pooled": output preservation), with `masks` the
    masks at latent resolution ("masks": the masked loss)."""
    import torch

    from portraitkit.train.objective import bare_caption, class_caption

    cache = {"latents": encode_images(pipe, [e["image"] for e in examples], resolution)}
    if families.of(pipe).size_ids:
        cache["time_ids"] = size_time_ids(examples, resolution)
    if encode_captions:
        with torch.no_grad():
            text = encode_text(pipe, [e["text"] for e in examples], pipe.text_encoder.device)
            cache.update({key: value.float() for key, value in text.items()})
            if bare:
                text = encode_text(pipe, [bare_caption(e["text"]) for e in examples], pipe.text_encoder.device)
                cache.update({f"bare_{key}": value.float() for key, value in text.items()})
            if class_prompt is not None:
                text = encode_text(pipe, [class_caption(e["text"], class_prompt) for e in examples], pipe.text_encoder.device)
                cache.update({f"class_{key}": value.float() for key, value in text.items()})
    if masks:
        cache["masks"] = latent_masks(examples, resolution, cache["latents"].shape[-1])
    return cache


def size_time_ids(examples: list[dict], resolution: int):
    """SDXL's added time ids per example (`conditioning.sdxl_time_ids`): the face crop's own size
    in its photo's pixels as prep recorded it, crop (0, 0), the training size as target.

    Examples without that record count as made at the training size: class images, and datasets
    of an older prep, which recorded the whole photo's size and the crop's corner instead."""
    import torch

    from portraitkit.models.conditioning import sdxl_time_ids

    rows = []
    for example in examples:
        original, corner = example.get("original_size"), example.get("crop_top_left")
        recorded = original and list(corner or ()) == [0, 0]
        rows.append(sdxl_time_ids(original if recorded else (resolution, resolution), resolution))
    return torch.tensor(rows, dtype=torch.float32)


def require_masks(examples: list[dict]) -> None:
    """Refuse, in one sentence, a dataset without prep's masks: never a silent plain loss."""
    if not all("mask" in e for e in examples):
        raise PortraitkitError("this dataset has no face masks (masks/ and mask_file_name in metadata.jsonl), which "
                               "--masked-loss needs: prepare it again with `portraitkit prep PHOTOS --out DATASET`, "
                               "or train without --masked-loss")


def latent_masks(examples: list[dict], resolution: int, latent_size: int):
    """Each example's mask, cropped as its image is, at latent resolution (`objective.latent_mask`)."""
    import torch

    from portraitkit.train.objective import latent_mask

    require_masks(examples)
    pixels = torch.stack([image_to_tensor(e["mask"].convert("RGB"), resolution)[:1] for e in examples])
    return latent_mask((pixels + 1) / 2 > 0.5, latent_size)


def batch_inputs(pipe, cache: dict, picks: list[int], captions: list[str], dropped: list[bool], device,
                 autocast=contextlib.nullcontext) -> tuple:
    """The micro-batch's latents and conditioning: cached text (a dropped caption's bare trigger
    phrase was cached beside it), SDXL's size ids, or, when the text encoder trains, the captions
    encoded now, with gradients, under the run's `autocast` (the UNet's: fp16 weights then compute
    LayerNorm and softmax in fp32, as in the UNet)."""
    import torch

    latents = cache["latents"][picks].to(device)
    cond = {}
    for key in cache:
        if key in ("latents", "masks") or key.startswith(("bare_", "class_")):
            continue
        cond[key] = torch.stack([cache[f"bare_{key}" if drop and f"bare_{key}" in cache else key][i]
                                 for i, drop in zip(picks, dropped)]).to(device)
    if "embeds" not in cache:  # the text encoder trains: encode with gradients
        with autocast():
            cond.update(encode_text(pipe, captions, device))
    return latents, cond


def preservation_inputs(pipe, cache: dict, picks: list[int], class_captions: list[str], device) -> tuple[dict, dict]:
    """Output preservation's class captions as the UNet takes them, (with the LoRA, without it):
    the same cached embeddings when the text encoders do not train; else encoded now, once with
    gradients through their LoRA and once, without gradients, with their adapters off."""
    import torch

    from portraitkit.models.lora import text_encoders
    from portraitkit.train.objective import adapters_off

    shared = {"time_ids": cache["time_ids"][picks].to(device)} if "time_ids" in cache else {}
    if "class_embeds" in cache:
        cond = {**shared, **{key.removeprefix("class_"): cache[key][picks].to(device) for key in cache if key.startswith("class_")}}
        return cond, cond
    with torch.no_grad(), adapters_off(*text_encoders(pipe)):
        base = {**shared, **encode_text(pipe, class_captions, device)}
    return {**shared, **encode_text(pipe, class_captions, device)}, base


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
