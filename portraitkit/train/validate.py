"""Validation during training: portraits drawn as the user will draw them, and how much each
step's portraits look like the person beside how alike the person's own photos are.

At each validated step (by default every tenth of the run: `TrainConfig.validated_steps`) the LoRA draws a couple of
`sample`'s styles at a few seeds with `sample`'s own recipe (`sample.recipe`: DPM++ 2M Karras,
the style's guidance and negative prompt), so `best/` is chosen from what the user will see.
Each step is scored against the training photos (`pick.likeness`): the renders' identity
distance to the centre of the person's photos (`likeness`) and to the nearest photo, how many
renders show a face and how many copy a training photo. The *ceiling* is how far each training
photo is from the centre of the others: two real photos of one person are never at 0. All of it
goes into identity.json and likeness.png; best/ keeps the LoRA of the likeliest step that copies
nothing. With held-out photos (`train --holdout N`) the likeness is also measured against them,
and `validation_loss` is the denoising loss on them with fixed noise and timesteps.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import save_image, write_json
from portraitkit.faces.detect import SAME_PERSON_THRESHOLD
from portraitkit.models import lora
from portraitkit.models.bases import decode_problem
from portraitkit.models.conditioning import unet_conditioning
from portraitkit.pick.likeness import centroid_distances, leave_one_out_distance, nearest_distances, reference_embeddings
from portraitkit.sample import recipe
from portraitkit.train.cache import batch_inputs, encode_examples, load_examples

IDENTITY_FILE = "identity.json"  # in a run folder: each validation step's likeness
BEST_DIR = "best"  # in a run folder: the LoRA of the validation step most like the person

# --- rendering --------------------------------------------------------------------------------


def validation_recipe(config, family: str) -> list[dict]:
    """What each validation renders: `config.validation_styles` x `config.validation_seeds`, with
    `sample`'s recipe for the person's token and class word (read from the dataset as sample reads them)."""
    from portraitkit.sample.render import person_words
    from portraitkit.sample.styles import load_styles, select_styles

    styles = select_styles(load_styles(family=family), list(config.validation_styles))
    try:
        token, class_word = person_words({"settings": {"dataset_dir": config.dataset_dir}})
    except PortraitkitError:  # sample's advice names its own flags; train has none for the words
        raise PortraitkitError(f"validation draws sample's styles for the person's token and class word, which could not be read "
                               f"from {config.dataset_dir} (captions begin \"a photo of TOKEN CLASS\" when `portraitkit prep` "
                               "writes them): prepare the photos with prep, or train with --no-validate") from None
    return recipe.draws(styles, token, class_word, config.validation_seeds, config.validation_steps,
                        sampler=recipe.family_sampler(family))


def run_validation(pipe, placement, config, examples: list[dict], resolution: int, run_dir: Path, step: int,
                   clock=None, held_out: list[dict] = ()) -> Path:
    """Render `config`'s (a TrainConfig) validation recipe; save each image and a grid under
    validation/, then score the step (identity.json, likeness.png, best/). `held_out`: photos kept
    out of training, which the likeness is also measured against. `clock` (train's PhaseClock)
    times the rendering as "validation" and the likeness as "scoring"."""
    import torch

    from portraitkit.core.grids import image_grid
    from portraitkit.train.run_folder import plot_likeness

    device = placement.device
    draws = validation_recipe(config, lora.family(pipe))
    training = [module for module in (lora.denoiser(pipe), *lora.text_encoders(pipe)) if module.training]
    for module in training:  # inference mode for the pictures; back to training at the end
        module.eval()
    looping = placement.here  # the UNet and any text encoder that trains stay where the loop has them
    # The prompts are encoded first and the encoders leave the GPU before the VAE comes: the
    # decode at full size (SDXL's VAE in fp32) is the run's largest graph.
    timed = clock or (lambda phase: contextlib.nullcontext())
    with timed("validation"), placement.on(*looping, "text_encoder", "text_encoder_2"), torch.no_grad():
        embeddings = {pair: prompt_embeddings(pipe, *pair, device)
                      for pair in dict.fromkeys((d["prompt"], d["negative_prompt"]) for d in draws)}
    folder = run_dir / "validation" / f"step_{step:06d}"
    images, problems = [], []
    sampler = recipe.family_sampler(lora.family(pipe))
    denoiser = without_text_encoders(pipe, scheduler=recipe.make_scheduler(sampler, pipe.scheduler.config))
    # No fp16 autocast here: it would force the VAE's convolutions into fp16, where SDXL's VAE
    # overflows to NaN whatever dtype the pipeline upcasts it to. peft's layers cast their
    # inputs themselves, so the fp32 LoRA runs beside the half-precision base without it.
    with timed("validation"), placement.on(*looping, "vae"), torch.no_grad(), torch.autocast(device.type, enabled=False):
        for draw in draws:
            array = denoiser(**embeddings[draw["prompt"], draw["negative_prompt"]], guidance_scale=draw["guidance_scale"],
                             num_inference_steps=draw["steps"], height=resolution, width=resolution, output_type="np",
                             generator=torch.Generator().manual_seed(draw["seed"])).images
            problems.append(decode_problem(array))
            image = denoiser.numpy_to_pil(np.nan_to_num(array))[0]
            images.append(image)
            save_image(folder / f"{draw['style']}_seed{draw['seed']}.png", image)
    broken = next((problem for problem in problems if problem), None)
    if broken:
        print(f"portraitkit: validation at step {step}: {broken}.")
    grid = save_image(folder.with_suffix(".png"), image_grid(images, columns=len(config.validation_seeds)))
    # What actually drew them, recorded: the scheduler the denoiser ran, not the one intended.
    used = {"scheduler": type(denoiser.scheduler).__name__,
            "karras_sigmas": bool(denoiser.scheduler.config.get("use_karras_sigmas", False)), "renders": draws}
    with timed("scoring"):
        score_validation_step(run_dir, step, images, [e["image"] for e in examples], config.steps,
                              save_best=lambda best: lora.save(pipe, best, config.rank, config.alpha, config.train_text_encoder),
                              broken=broken, held_out_images=[e["image"] for e in held_out], recipe=used)
        plot_likeness(run_dir)
    for module in training:
        module.train()
    return grid


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


def prompt_embeddings(pipe, prompt: str, negative_prompt: str, device) -> dict:
    """A prompt and its negative prompt as the embeddings the pipeline's call takes, so the
    text encoders need not stay on the GPU while it denoises and decodes."""
    if lora.family(pipe) == "flux2":
        from portraitkit.models import klein

        # klein's pipeline guides against the empty prompt when it is given no negative embeddings
        return {"prompt_embeds": klein.encode_prompts(pipe, [prompt], device),
                "negative_prompt_embeds": klein.encode_prompts(pipe, [negative_prompt], device)}
    if hasattr(pipe, "text_encoder_2"):
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative_prompt)
        return {"prompt_embeds": embeds, "negative_prompt_embeds": negative,
                "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    embeds, negative = pipe.encode_prompt(prompt, device, 1, True, negative_prompt=negative_prompt)
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative}


# --- scoring ------------------------------------------------------------------------------------


def score_validation_step(run_dir: Path, step: int, images: list, reference_images: list, final_step: int,
                          save_best: Callable[[Path], object], broken: str | None = None, held_out_images: list = (),
                          recipe: dict | None = None) -> dict:
    """Record how much `step`'s validation images look like the person, in run_dir/identity.json.

    Each step's row: `renders`, `faces` (renders with a face), `likeness` (their mean identity
    distance to the centre of the training faces; lower is more alike), `nearest` (to the nearest
    training face), `holdout` (to the centre of the held-out faces, if any), `copies` (renders that
    give back a training photo, named in `copied`) and `reason` when the step cannot be the best.
    The record's `ceiling` is the training faces' own leave-one-out distance. When `step` becomes
    the best (`best_step`), `save_best` is called with run_dir/best to keep its LoRA. Nothing is
    ever guessed: without faces the distances are null and `reason` says why; `broken` says why
    the images themselves are unusable (a failed decode), and the step is then not scored.
    """
    run_dir = Path(run_dir)
    path = run_dir / IDENTITY_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    steps = {row["step"]: row for row in record.get("steps", []) if row["step"] != step}

    row = {"step": step, "renders": len(images), "faces": 0, "likeness": None, "nearest": None, "holdout": None,
           "copies": 0, "copied": [], "reason": None}
    embeddings = held_out = np.zeros((0, 128))
    try:
        embeddings = reference_embeddings(reference_images)
        held_out = reference_embeddings(list(held_out_images)) if len(held_out_images) else held_out
        row.update(_identity_of_step(images, embeddings, held_out, reference_images) if not broken else {"reason": broken})
    except PortraitkitError as error:  # the face models are missing: training goes on, unscored
        row["reason"] = f"identity not scored: {error}"
    steps[step] = row

    best = best_step(list(steps.values()))
    if best == step and record.get("best_step") != step:
        (run_dir / BEST_DIR).mkdir(exist_ok=True)
        save_best(run_dir / BEST_DIR)  # before identity.json names it, so it never points at nothing
    ceiling = leave_one_out_distance(embeddings)
    record = {
        "reference_images": len(reference_images),
        "reference_faces": len(embeddings),
        "held_out_faces": len(held_out),
        "ceiling": None if ceiling is None else round(ceiling, 4),
        "steps": [steps[s] for s in sorted(steps)],
        "best_step": best,
        "best_lora": f"{BEST_DIR}/{lora.LORA_FILE}" if best is not None else None,
        "final_step": final_step,
        "final_lora": lora.LORA_FILE,  # what the run writes when it finishes step `final_step`
        # What `portraitkit sample` should use: the likeliest step, else the last one.
        "recommended": "best" if best is not None and best != final_step else "final",
        "reason": None if best is not None else _why_no_best(list(steps.values())),
        "same_person_threshold": SAME_PERSON_THRESHOLD,
        "recipe": recipe if recipe is not None else record.get("recipe"),
    }
    write_json(path, record)
    return record


def best_step(rows: list[dict]) -> int | None:
    """The step whose renders look most like the person (lowest `likeness`) among those that can be
    judged (a face in at least half of the renders) and copy no training photo; ties go to the
    earlier step. A step that copies is never the best, however alike: its LoRA memorises the
    photos instead of learning the person."""
    judged = [r for r in rows if r["likeness"] is not None and r["copies"] == 0 and 2 * r["faces"] >= r["renders"]]
    return min(judged, key=lambda r: (r["likeness"], r["step"]))["step"] if judged else None


def best_line(run_dir: Path) -> str | None:
    """One sentence for people: the best step's likeness beside the ceiling, or why there is none
    (what `portraitkit train` prints at the end); None for a run that was not validated."""
    path = Path(run_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("best_step") is None:
        return f"best/: none ({record.get('reason') or 'no validation step was scored'})"
    row = next(r for r in record["steps"] if r["step"] == record["best_step"])
    ceiling = f"; your own photos are {record['ceiling']:.2f} apart" if record.get("ceiling") is not None else ""
    return (f"likeness {row['likeness']:.2f} at step {row['step']}{ceiling} (identity distance, lower is more alike); "
            f"its LoRA is in {BEST_DIR}/")


def _why_no_best(rows: list[dict]) -> str:
    reasons = {r["reason"] for r in rows if r["reason"]}
    return "no validation step could be judged: " + "; ".join(sorted(reasons)) if reasons else "no validation step was scored"


def _identity_of_step(images: list, embeddings: np.ndarray, held_out: np.ndarray, reference_images: list) -> dict:
    """faces, likeness, nearest, holdout, copies and, where the step cannot be the best, the reason."""
    if len(embeddings) == 0:
        return {"reason": f"no face was found in the {len(reference_images)} training images, so there is nothing to compare with"}
    from portraitkit.faces.detect import detect_faces, face_embedding
    from portraitkit.pick.copies import CopyDetector

    detector = CopyDetector([f"training image {n}" for n in range(1, len(reference_images) + 1)], reference_images)
    found, copied = [], []
    for image in images:
        faces = detect_faces(image)
        if faces:
            found.append(face_embedding(image, faces[0]))
            copy = detector.copies(image, faces[0])
            if copy is not None:
                copied.append(copy.photo)
    if not found:
        return {"reason": f"no face was found in the {len(images)} validation images"}
    found = np.array(found)
    row = {"faces": len(found), "likeness": _mean(centroid_distances(found, embeddings)),
           "nearest": _mean(nearest_distances(found, embeddings)),
           "holdout": _mean(centroid_distances(found, held_out)) if len(held_out) else None,
           "copies": len(copied), "copied": sorted(set(copied)), "reason": None}
    if len(found) * 2 < len(images):
        row["reason"] = (f"faces found in only {len(found)} of {len(images)} validation images "
                         "(at least half are needed to judge a step)")
    elif copied:
        row["reason"] = (f"copies_training_photo: {len(copied)} of {len(images)} validation images reproduce a training photo "
                         f"({', '.join(row['copied'])}), so this step's LoRA memorises rather than learns")
    return row


def _mean(values) -> float:
    return round(float(np.mean(values)), 4)


# --- the held-out photos ------------------------------------------------------------------------

HELD_OUT_DRAWS = 4  # timesteps per held-out photo, spread over the schedule: a steadier loss than one random draw
HELD_OUT_SALT = 52_711  # the held-out draws' own generator: the same for every validation of a run


def validation_loss(pipe, cache: dict, captions: list[str], noise_scheduler, resolution: int, snr_gamma: float | None,
                    seed: int, dtype=None) -> float:
    """The training loss (min-SNR weighted) on the held-out photos' `cache`, with noise and
    timesteps fixed by `seed`: every validation of a run draws the same, so the numbers compare
    across steps, and identical weights give an identical loss. Timesteps are spread evenly over
    the schedule (each photo at HELD_OUT_DRAWS of them) rather than drawn, so no validation is
    luckier than another."""
    import torch

    from portraitkit.train.objective import step_loss

    device = lora.denoiser(pipe).device
    count = len(cache["latents"])
    picks = [i for i in range(count) for _ in range(HELD_OUT_DRAWS)]
    total = noise_scheduler.config.num_train_timesteps
    generator = torch.Generator().manual_seed(seed * 1_000_003 + HELD_OUT_SALT)
    noise = torch.randn((len(picks), *cache["latents"].shape[1:]), generator=generator)
    timesteps = torch.tensor([int((k + 0.5) * total / HELD_OUT_DRAWS) for _ in range(count) for k in range(HELD_OUT_DRAWS)])
    with torch.no_grad():
        latents, cond = batch_inputs(pipe, cache, picks, [captions[i] for i in picks], [False] * len(picks), device)
        per_sample = step_loss(pipe, noise_scheduler, latents, noise.to(device), timesteps.to(device), cond, resolution,
                               snr_gamma, dtype)
    return round(float(per_sample.mean()), 6)


# --- what the LoRA learned --------------------------------------------------------------------


def denoising_loss(base: str, dataset_dir: str, lora_dir: str | None = None, resolution: int | None = None,
                   seed: int = 1234, draws: int = 8) -> float:
    """Mean denoising loss of a base (plus LoRA) on a dataset, with fixed noise and timesteps.

    The same draws are used for any LoRA, so two calls compare like with like: a LoRA that
    learned the person has a lower loss on that person's photos than the base model.
    """
    import torch
    from diffusers import DDPMScheduler

    from portraitkit.models.bases import load_pipeline, resolve_base

    if resolve_base(base).family == "flux2":  # refused before minutes of loading
        raise PortraitkitError("denoising_loss measures Stable Diffusion's noise prediction; for a FLUX.2 base, train with "
                               "--holdout N and read the held-out photos' validation_loss in train_log.jsonl")
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
