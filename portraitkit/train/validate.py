"""Validation during training: portraits drawn as the user will draw them, and where each step's
portraits land in the person's likeness band.

At each validated step (by default every tenth of the run: `TrainConfig.validated_steps`) the LoRA draws a couple of
`sample`'s styles at a few seeds with `sample`'s own recipe (`sample.recipe`: DPM++ 2M Karras,
the style's guidance and negative prompt), so `best/` is chosen from what the user will see.
Each render is judged as pick judges a portrait, on the one likeness scale (`faces.likeness`: the
distance to the centre of the training faces) against the person's band (where their own new
photos land, where copying begins, where other people begin), skipping faces turned beyond the
judged range or whose landmarks missed (`faces.pose`), and checking each for a training photo
given back (`faces.photograph`, as prep and pick do). Per step `identity.json` records the
evidence: faces found and `scored`, `in_band` (renders that look like the person as their own new
photos do), `copying` (closer than those), `copies`, and `variety` (how varied the renders' faces
are against the person's own photos: a LoRA that draws one look every time has learned a photo,
not a face). `best/` keeps the step a person would choose (`best_step`). With held-out photos
(`train --holdout N`) the likeness is also measured against them, and `validation_loss` is the
denoising loss on them with fixed noise and timesteps.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import save_image, write_json
from portraitkit.faces.likeness import LikenessBand, likeness_band, likeness_distances, nearest_distances, spread_of
from portraitkit.models import lora
from portraitkit.models.bases import decode_problem
from portraitkit.models import families
from portraitkit.models.conditioning import unet_conditioning, without_text_encoders
from portraitkit.faces.proportions import Proportions
from portraitkit.pick.likeness import person_proportions_of, reference_embeddings
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
    family = families.of(pipe)
    draws = validation_recipe(config, family.name)
    training = [module for module in (lora.denoiser(pipe), *lora.text_encoders(pipe)) if module.training]
    for module in training:  # inference mode for the pictures; back to training at the end
        module.eval()
    looping = placement.here  # the UNet and any text encoder that trains stay where the loop has them
    # The prompts are encoded first and the encoders leave the GPU before the VAE comes: the
    # decode at full size (SDXL's VAE in fp32) is the run's largest graph.
    timed = clock or (lambda phase: contextlib.nullcontext())
    with timed("validation"), placement.on(*looping, "text_encoder", "text_encoder_2"), torch.no_grad():
        embeddings = {pair: family.prompt_embeddings(pipe, *pair, device)
                      for pair in dict.fromkeys((d["prompt"], d["negative_prompt"]) for d in draws)}
    folder = run_dir / "validation" / f"step_{step:06d}"
    images, problems = [], []
    sampler = recipe.family_sampler(family.name)
    drawing = without_text_encoders(pipe, scheduler=recipe.make_scheduler(sampler, pipe.scheduler.config))
    # No fp16 autocast here: it would force the VAE's convolutions into fp16, where SDXL's VAE
    # overflows to NaN whatever dtype the pipeline upcasts it to. peft's layers cast their
    # inputs themselves, so the fp32 LoRA runs beside the half-precision base without it.
    with timed("validation"), placement.on(*looping, "vae"), torch.no_grad(), torch.autocast(device.type, enabled=False):
        for draw in draws:
            array = drawing(**embeddings[draw["prompt"], draw["negative_prompt"]], guidance_scale=draw["guidance_scale"],
                             num_inference_steps=draw["steps"], height=resolution, width=resolution, output_type="np",
                             generator=torch.Generator().manual_seed(draw["seed"])).images
            problems.append(decode_problem(array))
            image = drawing.numpy_to_pil(np.nan_to_num(array))[0]
            images.append(image)
            save_image(folder / f"{draw['style']}_seed{draw['seed']}.png", image)
    broken = next((problem for problem in problems if problem), None)
    if broken:
        print(f"portraitkit: validation at step {step}: {broken}.")
    grid = save_image(folder.with_suffix(".png"), image_grid(images, columns=len(config.validation_seeds)))
    # What actually drew them, recorded: the scheduler the drawing pipeline ran, not the one intended.
    used = {"scheduler": type(drawing.scheduler).__name__,
            "karras_sigmas": bool(drawing.scheduler.config.get("use_karras_sigmas", False)), "renders": draws}
    with timed("scoring"):
        score_validation_step(run_dir, step, images, [e["image"] for e in examples], config.steps,
                              save_best=lambda best: lora.save(pipe, best, config.rank, config.alpha, config.train_text_encoder),
                              broken=broken, held_out_images=[e["image"] for e in held_out], recipe=used,
                              proportions=person_proportions_of(Path(config.dataset_dir), [e["image"] for e in examples]))
        plot_likeness(run_dir)
    for module in training:
        module.train()
    return grid


# --- scoring ------------------------------------------------------------------------------------


# Renders whose faces vary less than this share of the person's own photos' spread have
# collapsed to one look: nine edits of one photograph measure 0.32 of the person's own photos'
# spread (median over 26 real people, 0.22-0.53; bench_judge), distinct photos about 1 (docs/judge.md).
MIN_VARIETY = 0.5
# Steps whose share of renders in the band differs by no more than one render of eight are
# near-equal: the earlier is kept (it has learned less of the photos' accidents).
NEAR_EQUAL = 0.125


def score_validation_step(run_dir: Path, step: int, images: list, reference_images: list, final_step: int,
                          save_best: Callable[[Path], object], broken: str | None = None, held_out_images: list = (),
                          recipe: dict | None = None, proportions: Proportions | None = None) -> dict:
    """Record where `step`'s validation images land in the person's band, in run_dir/identity.json.

    Each step's row: `renders`, `faces` (renders with a face), `scored` (faces judged: not turned
    too far, landmarks landed), `likeness` (their mean distance on the likeness scale; lower is
    more alike), `nearest` (to the nearest training face), `holdout` (to the centre of the
    held-out faces, if any), `in_band`, `unsure` and `copying` (scored renders in the band's `you`,
    `unsure` and `copying` zones), `variety` (the scored faces' spread over the person's), `copies` (renders
    that give back a training photo, named in `copied`), `proportions` (the near-frontal renders'
    mean drift from the person's `proportions`, per ratio: `Proportions.drift`; None without the
    person's) and `reason` when the step cannot be the best. The record's `band` is the person's (`faces.likeness.LikenessBand`). When `step`
    becomes the best (`best_step`), `save_best` is called with run_dir/best to keep its LoRA.
    Nothing is ever guessed: without faces the distances are null and `reason` says why;
    `broken` says why the images themselves are unusable (a failed decode), and the step is then
    not scored.
    """
    run_dir = Path(run_dir)
    path = run_dir / IDENTITY_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    steps = {row["step"]: row for row in record.get("steps", []) if row["step"] != step}

    row = {"step": step, "renders": len(images), "faces": 0, "scored": 0, "likeness": None, "nearest": None,
           "holdout": None, "in_band": 0, "unsure": 0, "copying": 0, "variety": None, "copies": 0, "copied": [], "reason": None,
           "proportions": None}
    embeddings = held_out = np.zeros((0, 128))
    band = None
    try:
        embeddings = reference_embeddings(reference_images)
        held_out = reference_embeddings(list(held_out_images)) if len(held_out_images) else held_out
        band = likeness_band(embeddings) if len(embeddings) else None
        row.update(_identity_of_step(images, embeddings, held_out, reference_images, band, proportions)
                   if not broken else {"reason": broken})
    except PortraitkitError as error:  # the face models are missing: training goes on, unscored
        row["reason"] = f"identity not scored: {error}"
    steps[step] = row

    best = best_step(list(steps.values()))
    if best == step and record.get("best_step") != step:
        (run_dir / BEST_DIR).mkdir(exist_ok=True)
        save_best(run_dir / BEST_DIR)  # before identity.json names it, so it never points at nothing
    record = {
        "reference_images": len(reference_images),
        "reference_faces": len(embeddings),
        "held_out_faces": len(held_out),
        "scale": "distance to the centre of the training faces (dlib embeddings); lower is more alike",
        "band": band.to_dict() if band is not None else record.get("band"),
        "proportions": proportions.to_dict() if proportions is not None else record.get("proportions"),
        "steps": [steps[s] for s in sorted(steps)],
        "best_step": best,
        "best_lora": f"{BEST_DIR}/{lora.LORA_FILE}" if best is not None else None,
        "final_step": final_step,
        "final_lora": lora.LORA_FILE,  # what the run writes when it finishes step `final_step`
        # What `portraitkit sample` should use: the step a person would choose, else the last one.
        "recommended": "best" if best is not None and best != final_step else "final",
        "reason": None if best is not None else _why_no_best(list(steps.values())),
        "recipe": recipe if recipe is not None else record.get("recipe"),
    }
    write_json(path, record)
    return record


def best_step(rows: list[dict]) -> int | None:
    """The step a person would choose: the most renders in the person's band, among the steps that
    can be judged (faces scored in at least half of the renders) and copy no training photo. A
    step whose renders collapse to one look (`variety` under MIN_VARIETY) counts half its band.
    Steps are weighed in order, and a later one replaces the choice only when clearly better (by
    more than NEAR_EQUAL): of near-equal steps the earliest wins, since later ones only memorise
    more; and the choice only ever moves to the newest step, whose LoRA is the one at hand to keep.
    A step that copies is never the best, however alike. While no render lands in the band, the
    likeliest step with an "unsure" render is kept; when every judged render is someone else, none is."""
    def value(row: dict) -> float:
        share = row["in_band"] / row["renders"]
        collapsed = row.get("variety") is not None and row["variety"] < MIN_VARIETY
        return share / 2 if collapsed else share

    def better(new: dict, old: dict) -> bool:
        if value(new) > value(old) + NEAR_EQUAL:
            return True
        return value(new) == value(old) == 0 and new["likeness"] < old["likeness"]

    best = None
    for row in sorted(rows, key=lambda r: r["step"]):
        judged = row.get("likeness") is not None and row["copies"] == 0 and 2 * row.get("scored", 0) >= row["renders"]
        if not judged or (value(row) == 0 and not row.get("unsure")):  # someone else in every judged render
            continue
        if best is None or better(row, best):
            best = row
    return best["step"] if best is not None else None


def best_line(run_dir: Path) -> str | None:
    """One sentence for people: where the best step's portraits land in the person's band, or why
    there is none (what `portraitkit train` prints at the end); None for a run that was not validated."""
    path = Path(run_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    if record.get("best_step") is None:
        return f"best/: none ({record.get('reason') or 'no validation step was scored'})"
    row = next(r for r in record["steps"] if r["step"] == record["best_step"])
    band = record.get("band") or {}
    where = (f"; your own new photos land within {band['you_within']:.2f} of the centre of your photos, other people beyond "
             f"{band['someone_else_beyond']:.2f}") if band else ""
    return (f"best/: step {row['step']}: {row['in_band']} of {row['renders']} portraits look like you, "
            f"likeness {row['likeness']:.2f}{where} (lower is more alike); none copies a photo")


def _why_no_best(rows: list[dict]) -> str:
    reasons = {r["reason"] for r in rows if r["reason"]}
    return "no validation step could be judged: " + "; ".join(sorted(reasons)) if reasons else "no validation step was scored"


def _identity_of_step(images: list, embeddings: np.ndarray, held_out: np.ndarray, reference_images: list,
                      band: LikenessBand | None, proportions: Proportions | None = None) -> dict:
    """faces, scored, likeness, nearest, holdout, in_band, copying, variety, copies, proportions
    (the near-frontal renders' mean drift from the person's, `Proportions.drift`) and, where the
    step cannot be the best, the reason."""
    if len(embeddings) == 0 or band is None:
        return {"reason": f"no face was found in the {len(reference_images)} training images, so there is nothing to compare with"}
    from portraitkit.faces.detect import detect_faces, face_embedding
    from portraitkit.faces.pose import turned_too_far
    from portraitkit.faces.proportions import measure, not_measured
    from portraitkit.pick.copies import TrainingPhotos

    photos = TrainingPhotos([f"training image {n}" for n in range(1, len(reference_images) + 1)], reference_images)
    faces, scored, copied, ratios = 0, [], [], []
    for image in images:
        copy = photos.copies(image)  # with a face found or not: a training photo given back is a copy either way
        if copy is not None:
            copied.append(copy.photo)
        found = detect_faces(image)
        if not found:
            continue
        faces += 1
        if turned_too_far(found[0]) is None:  # as pick: a face turned beyond the judged range is not judged
            scored.append(face_embedding(image, found[0]))
        if not_measured(found[0]) is None:
            ratios.append(measure(found[0].landmarks))
    if not faces:
        return {"copies": len(copied), "copied": sorted(set(copied)),
                "reason": f"no face was found in the {len(images)} validation images"}
    row = {"faces": faces, "scored": len(scored), "copies": len(copied), "copied": sorted(set(copied)), "reason": None,
           "proportions": proportions.drift(ratios) if proportions is not None else None}
    if scored:
        scored = np.array(scored)
        distances = likeness_distances(scored, embeddings)
        zones = [band.zone(float(d)) for d in distances]
        variety = spread_of(scored)
        person = band.spread
        row.update(likeness=_mean(distances), nearest=_mean(nearest_distances(scored, embeddings)),
                   holdout=_mean(likeness_distances(scored, held_out)) if len(held_out) else None,
                   in_band=zones.count("you"), unsure=zones.count("unsure"), copying=zones.count("copying"),
                   variety=None if variety is None or not person else round(variety / person, 4))
    if len(scored) * 2 < len(images):
        row["reason"] = (f"faces judged in only {len(scored)} of {len(images)} validation images "
                         f"({faces} found; at least half must be judged to judge a step)")
    elif copied:
        row["reason"] = (f"copies_training_photo: {len(copied)} of {len(images)} validation images reproduce a training photo "
                         f"({', '.join(row['copied'])}), so this step's LoRA memorises rather than learns")
    return row


def proportions_advice(run_dir: Path, dataset_dir: Path) -> str | None:
    """What to do when the last validated step's renders draw the nose wider against the face than
    the person's photos (beyond the measure's noise for that many renders): most likely the selfie
    nose learned from close photos, which `prep --correct-distance` re-renders from afar."""
    path = Path(run_dir) / IDENTITY_FILE
    rows = json.loads(path.read_text(encoding="utf-8")).get("steps", []) if path.is_file() else []
    drift = next(((r.get("proportions") or {}).get("nose_width") for r in reversed(rows) if (r.get("proportions") or {}).get("nose_width")), None)
    if not drift or not drift["beyond"] or drift["difference_pct"] <= 0:
        return None
    report = Path(dataset_dir) / "report.json"
    distances = json.loads(report.read_text(encoding="utf-8")).get("summary", {}).get("camera_distance", {}) if report.is_file() else {}
    said = (f"The validation renders draw your nose {drift['difference_pct']:.0f}% wider against your face than your photos "
            f"do (the mean of {drift['portraits']}, beyond what the measure's noise explains): the selfie effect, learned as your face.")
    close, known = distances.get("selfies", 0), distances.get("known", 0)
    if known and 2 * close > known:
        return (said + f" {close} of {known} of your photos with a known distance are arm's-length selfies: prepare them again "
                f"with `portraitkit prep PHOTOS --out {dataset_dir} --correct-distance` (re-rendered from 1.5 m), and train again.")
    return (said + " If your photos are arm's-length selfies, `portraitkit prep --correct-distance` re-renders them from 1.5 m "
            "(it needs their EXIF focal length), or add shots from 1-2 m away.")


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
    losses = []
    with torch.no_grad():
        for start in range(0, len(picks), HELD_OUT_DRAWS):  # one photo's draws at a time: a batch the size of a step's
            chunk = slice(start, start + HELD_OUT_DRAWS)
            latents, cond = batch_inputs(pipe, cache, picks[chunk], [captions[i] for i in picks[chunk]],
                                         [False] * HELD_OUT_DRAWS, device)
            losses.append(step_loss(pipe, noise_scheduler, latents, noise[chunk].to(device), timesteps[chunk].to(device),
                                    cond, resolution, snr_gamma, dtype))
    return round(float(torch.cat(losses).mean()), 6)


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

    if families.named(resolve_base(base).family).objective != "ddpm":  # refused before minutes of loading
        raise PortraitkitError("denoising_loss measures Stable Diffusion's noise prediction; for a FLUX.2 base, train with "
                               "--holdout N and read the held-out photos' validation_loss in train_log.jsonl")
    pipe = load_pipeline(base)
    if lora_dir is not None:
        lora.load(pipe, lora_dir)
    examples = load_examples(dataset_dir)
    resolution = resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    cache = encode_examples(pipe, examples, resolution, encode_captions=True)
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
