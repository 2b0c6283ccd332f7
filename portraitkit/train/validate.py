"""Validation during training: fixed prompts and seeds rendered along the way, and how much each
step's images look like the person.

Each validation step saves its images under validation/, and is scored against the training
photos with `rank`'s identity scorer: identity.json records every step, and best/ keeps the LoRA
of the step most like the person (a LoRA trained too long drifts from the face, so the final
step is not always the best). `denoising_loss` measures the other thing a LoRA should do: lower
the denoising loss on the person's own photos.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from portraitkit.models import lora
from portraitkit.models.bases import decode_problem
from portraitkit.core.errors import PortraitkitError
from portraitkit.train.cache import encode_examples, load_examples
from portraitkit.models.conditioning import unet_conditioning
from portraitkit.faces.detect import SAME_PERSON_THRESHOLD
from portraitkit.core.files import save_image, write_json
from portraitkit.pick.likeness import IdentityScorer, reference_embeddings

IDENTITY_FILE = "identity.json"  # in a run folder: each validation step's likeness
BEST_DIR = "best"  # in a run folder: the LoRA of the validation step most like the person


# --- rendering --------------------------------------------------------------------------------


def validation_prompts(config, examples: list[dict]) -> list[str]:
    if config.validation_prompts:
        return list(config.validation_prompts)
    return list(dict.fromkeys(e["text"] for e in examples))[:2]


def run_validation(pipe, placement, config, examples: list[dict], resolution: int, run_dir: Path, step: int,
                   clock=None) -> Path:
    """Render `config`'s (a TrainConfig) fixed prompts x fixed seeds; save each image and a grid under
    validation/, then score the step (identity.json, best/). `clock` (train's PhaseClock) times
    the rendering as "validation" and the likeness as "scoring"."""
    import torch

    from portraitkit.core.grids import image_grid

    device = placement.device
    training = [module for module in (pipe.unet, *lora.text_encoders(pipe)) if module.training]
    for module in training:  # inference mode for the pictures; back to training at the end
        module.eval()
    looping = placement.here  # the UNet and any text encoder that trains stay where the loop has them
    # The prompts are encoded first and the encoders leave the GPU before the VAE comes: the
    # decode at full size (SDXL's VAE in fp32) is the run's largest graph.
    timed = clock or (lambda phase: contextlib.nullcontext())
    with timed("validation"), placement.on(*looping, "text_encoder", "text_encoder_2"), torch.no_grad():
        embeddings = [prompt_embeddings(pipe, prompt, device) for prompt in validation_prompts(config, examples)]
    folder = run_dir / "validation" / f"step_{step:06d}"
    images, problems = [], []
    denoiser = without_text_encoders(pipe)
    # No fp16 autocast here: it would force the VAE's convolutions into fp16, where SDXL's VAE
    # overflows to NaN whatever dtype the pipeline upcasts it to. peft's layers cast their
    # inputs themselves, so the fp32 LoRA runs beside the half-precision base without it.
    with timed("validation"), placement.on(*looping, "vae"), torch.no_grad(), torch.autocast(device.type, enabled=False):
        for p, embedding in enumerate(embeddings):
            for seed in config.validation_seeds:
                generator = torch.Generator().manual_seed(seed)
                array = denoiser(**embedding, height=resolution, width=resolution, output_type="np",
                                 num_inference_steps=config.validation_steps, generator=generator).images
                problems.append(decode_problem(array))
                image = denoiser.numpy_to_pil(np.nan_to_num(array))[0]
                images.append(image)
                save_image(folder / f"prompt{p}_seed{seed}.png", image)
    broken = next((problem for problem in problems if problem), None)
    if broken:
        print(f"portraitkit: validation at step {step}: {broken}.")
    grid = save_image(folder.with_suffix(".png"), image_grid(images, columns=len(config.validation_seeds)))
    # identity.json: how much each step's images look like the person; best/ keeps the likeliest LoRA.
    with timed("scoring"):
        score_validation_step(run_dir, step, images, [e["image"] for e in examples], config.steps,
                              save_best=lambda best: lora.save(pipe, best, config.rank, config.alpha, config.train_text_encoder),
                              broken=broken)
    for module in training:
        module.train()
    return grid


def without_text_encoders(pipe):
    """The same pipeline (shared modules, nothing copied) without its text encoders, for a call
    given prompt embeddings. Diffusers releases before late 2026 take a pipeline's device from
    its alphabetically first model, the text encoder: left on the CPU, it would pull the whole
    call there. Without it, that is the UNet's device in every release."""
    drop = {name: None for name in ("text_encoder", "text_encoder_2") if name in pipe.components}
    if "safety_checker" in pipe.components:  # SD1.x: portraits of the user, as load_pipeline says
        drop["requires_safety_checker"] = False
    denoiser = type(pipe)(**{**pipe.components, **drop})
    denoiser.set_progress_bar_config(disable=True)
    return denoiser


def prompt_embeddings(pipe, prompt: str, device) -> dict:
    """A prompt and the empty negative prompt as the embeddings the pipeline's call takes, so the
    text encoders need not stay on the GPU while it denoises and decodes."""
    if hasattr(pipe, "text_encoder_2"):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    embeds, negative = pipe.encode_prompt(prompt, device, 1, True)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


# --- scoring ------------------------------------------------------------------------------------


def score_validation_step(run_dir: Path, step: int, images: list, reference_images: list, final_step: int,
                          save_best: Callable[[Path], object], broken: str | None = None) -> dict:
    """Record how much `step`'s validation images look like the person, in run_dir/identity.json.

    A step qualifies as the best when faces were found in at least half of its images; the best
    is the one with the lowest mean identity distance. When `step` becomes the best, `save_best`
    is called with run_dir/best to keep its LoRA (old checkpoints are pruned). Nothing is ever
    guessed: without faces the distances are null and `reason` says why; `broken` says why the
    images themselves are unusable (a failed decode), and the step is then not scored.
    """
    run_dir = Path(run_dir)
    path = run_dir / IDENTITY_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    steps = {row["step"]: row for row in record.get("steps", []) if row["step"] != step}

    row = {"step": step, "images": len(images), "faces_found": 0, "mean_identity_distance": None, "reason": None}
    embeddings = np.zeros((0, 128))
    try:
        embeddings = reference_embeddings(reference_images)
        row.update(_identity_of_step(images, embeddings, reference_images) if not broken else {"reason": broken})
    except PortraitkitError as error:  # the face models are missing: training goes on, unscored
        row["reason"] = f"identity not scored: {error}"
    steps[step] = row

    eligible = [r for r in steps.values() if r["reason"] is None]
    best = min(eligible, key=lambda r: (r["mean_identity_distance"], r["step"])) if eligible else None
    previous_best = record.get("best_step")
    if best is not None and best["step"] == step and previous_best != step:
        (run_dir / BEST_DIR).mkdir(exist_ok=True)
        save_best(run_dir / BEST_DIR)  # before identity.json names it, so it never points at nothing
    best_step = best["step"] if best is not None else None
    record = {
        "reference_images": len(reference_images),
        "reference_faces": len(embeddings),
        "steps": [steps[s] for s in sorted(steps)],
        "best_step": best_step,
        "best_lora": f"{BEST_DIR}/{lora.LORA_FILE}" if best_step is not None else None,
        "final_step": final_step,
        "final_lora": lora.LORA_FILE,  # what the run writes when it finishes step `final_step`
        # What `portraitkit sample` should use: the likeliest step, else the last one.
        "recommended": "best" if best_step is not None and best_step != final_step else "final",
        "reason": None if best_step is not None else _why_no_best(list(steps.values())),
        "same_person_threshold": SAME_PERSON_THRESHOLD,
    }
    write_json(path, record)
    return record


def _why_no_best(rows: list[dict]) -> str:
    reasons = {r["reason"] for r in rows if r["reason"]}
    return "no validation step could be judged: " + "; ".join(sorted(reasons)) if reasons else "no validation step was scored"


def _identity_of_step(images: list, embeddings: np.ndarray, reference_images: list) -> dict:
    """faces_found, mean_identity_distance, copies and, where the step cannot be judged, the reason.

    A step whose images give back a training photo (`copies`) is never the best, however alike:
    its LoRA has begun to memorise the photos instead of learning the person."""
    if len(embeddings) == 0:
        return {"reason": f"no face was found in the {len(reference_images)} training images, so there is nothing to compare with"}
    from portraitkit.pick.copies import CopyDetector
    from portraitkit.faces.detect import detect_faces, face_embedding

    scorer = IdentityScorer(embeddings)
    detector = CopyDetector([f"training image {n}" for n in range(1, len(reference_images) + 1)], reference_images)
    distances, copies = [], []
    for image in images:
        found = detect_faces(image)
        if found:
            distances.append(scorer.distance(face_embedding(image, found[0])))
            copied = detector.copies(image, found[0])
            if copied is not None:
                copies.append(copied.photo)
    if not distances:
        return {"reason": f"no face was found in the {len(images)} validation images"}
    row = {"faces_found": len(distances), "mean_identity_distance": round(float(np.mean(distances)), 4), "reason": None,
           "copies": copies}
    if len(distances) * 2 < len(images):
        row["reason"] = (f"faces found in only {len(distances)} of {len(images)} validation images "
                         "(at least half are needed to judge a step)")
    elif copies:
        row["reason"] = (f"copies_training_photo: {len(copies)} of {len(images)} validation images reproduce a training photo "
                         f"({', '.join(sorted(set(copies)))}), so this step's LoRA memorises rather than learns")
    return row


# --- what the LoRA learned --------------------------------------------------------------------


def denoising_loss(base: str, dataset_dir: str, lora_dir: str | None = None, resolution: int | None = None,
                   seed: int = 1234, draws: int = 8) -> float:
    """Mean denoising loss of a base (plus LoRA) on a dataset, with fixed noise and timesteps.

    The same draws are used for any LoRA, so two calls compare like with like: a LoRA that
    learned the person has a lower loss on that person's photos than the base model.
    """
    import torch
    from diffusers import DDPMScheduler

    from portraitkit.models.bases import load_pipeline

    pipe = load_pipeline(base)
    if lora_dir is not None:
        lora.load(pipe, lora_dir)
    examples = load_examples(dataset_dir)
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    cache = encode_examples(pipe, examples, resolution, with_text=True)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(draws):
            latents = cache["latents"]
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=generator)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            prediction = pipe.unet(noisy, timesteps, **unet_conditioning(cache, resolution, torch.float32)).sample
            target = scheduler.get_velocity(latents, noise, timesteps) if scheduler.config.prediction_type == "v_prediction" else noise
            total += torch.nn.functional.mse_loss(prediction, target).item()
    return total / draws
