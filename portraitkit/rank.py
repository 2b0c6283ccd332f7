"""Ranking portraits: does it look like the person, and is it a good picture?

Each image gets:
- an identity distance: the mean dlib embedding distance between its face and every face of the
  reference set (the prepared dataset, i.e. photos of the person). The mean of pairwise
  distances keeps dlib's calibration: 0.6 or less means the same person (99.38% on LFW,
  ageitgey/face_recognition README);
- technical quality from `portraitkit.diagnose` on the face region: sharpness and exposure,
  plus whether exactly one face is in the picture.

score = 1 - identity distance - penalties (below), so a higher score is better and likeness
counts most; images without a usable face score 0 and are ranked last with the reason.

Training uses the same scorer (`score_validation_step`) to tell which validation step's images
look most like the person, and keeps a copy of that step's LoRA.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from portraitkit.errors import PortraitkitError
from portraitkit.faces import SAME_PERSON_THRESHOLD
from portraitkit.files import save_image, write_json

RANKING_FILE = "ranking.json"
PICKS_SHEET = "picks.png"
IDENTITY_FILE = "identity.json"  # in a run folder: each validation step's likeness
BEST_DIR = "best"  # in a run folder: the LoRA of the validation step most like the person


@dataclass(frozen=True)
class Penalties:
    """What each problem costs in score (identity differences are 0.1-0.4 between good images)."""

    # The distance threshold itself is crossed: the picture shows someone else. Costs more than
    # any quality problem, since a sharp stranger is worth less than a soft likeness.
    different_person: float = 0.25
    # A second face: a portrait of the person should show only them (generated crowds, mirrors).
    several_faces: float = 0.1
    # Blurry face (diagnose's blur effect above its flag level): skin and eyes have no detail.
    blurry: float = 0.15
    # Face too dark or too bright, or large parts of it clipped to black or white.
    badly_exposed: float = 0.1


def rank_images(images_dir: str | Path, reference_dir: str | Path, top: int = 8, penalties: Penalties = Penalties()) -> list[dict]:
    """Score and rank every image in `images_dir` against the person in `reference_dir`.

    Writes `images_dir/ranking.json` (best first) and `images_dir/picks.png` (the top `top`).
    Uses `images_dir/manifest.json` when present (its files, and their style and seed).
    """
    from tqdm.auto import tqdm

    from portraitkit.photos import open_photo

    images_dir = Path(images_dir)
    if top < 1:
        raise PortraitkitError("--top must be at least 1")
    listed = image_files(images_dir)
    scorer = IdentityScorer.from_folder(reference_dir)
    rows = []
    for name, extra in tqdm(listed, desc="ranking portraits", unit="img"):
        try:
            image = open_photo(images_dir / name)
        except PortraitkitError as error:  # one bad file must not sink the ranking of the rest
            rows.append({"file": name, **extra, **unscored(f"unreadable: {error}")})
            continue
        rows.append({"file": name, **extra, **scorer.score(image, penalties)})
    ranked = order(rows)
    write_json(images_dir / RANKING_FILE, ranked)
    save_image(images_dir / PICKS_SHEET, picks_sheet(images_dir, ranked[:top]))
    return ranked


def image_files(images_dir: Path) -> list[tuple[str, dict]]:
    """(file name, what the manifest says of it) for each image to rank.

    With a manifest.json: its files that exist. Without: every photo in the folder itself
    (not sub-folders, where grids live), leaving out portraitkit's own picks sheet.
    """
    import json

    from portraitkit.photos import PHOTO_SUFFIXES

    if not images_dir.is_dir():
        raise PortraitkitError(f"{images_dir} is not a folder: pass the folder of images to rank")
    manifest = images_dir / "manifest.json"
    if manifest.is_file():
        keep = ("style", "seed", "lora_scale")
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))
            found = [(e["file"], {k: e[k] for k in keep if k in e}) for e in entries if (images_dir / e["file"]).is_file()]
        except (json.JSONDecodeError, TypeError, KeyError):
            raise PortraitkitError(f"{manifest} is not a portraitkit manifest: remove it to rank every image in the folder") from None
    else:
        found = [(p.name, {}) for p in sorted(images_dir.iterdir())
                 if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".") and p.name != PICKS_SHEET]
    if not found:
        raise PortraitkitError(f"{images_dir} holds no images to rank: generate some with `portraitkit sample RUN --out {images_dir}`")
    return found


def order(rows: list[dict]) -> list[dict]:
    """Usable faces by score (best first), then the rest; `rank` 1 is the best."""
    ranked = sorted(rows, key=lambda r: (r["identity_distance"] is None, -r["score"], r["identity_distance"] or 0, r["file"]))
    return [{"file": r["file"], "rank": i, **{k: v for k, v in r.items() if k != "file"}} for i, r in enumerate(ranked, 1)]


def unscored(reason: str) -> dict:
    return {"identity_distance": None, "score": 0.0, "faces": 0, "blur": None, "exposure": None, "mean_luma": None,
            "reasons": [reason]}


# --- the scorer -------------------------------------------------------------------------------


class IdentityScorer:
    """Scores images against embeddings of the person's reference faces."""

    def __init__(self, reference: np.ndarray):
        self.reference = np.asarray(reference, dtype=np.float64).reshape(-1, 128)

    @classmethod
    def from_images(cls, images: list) -> IdentityScorer:
        """From PIL images of the person; raises PortraitkitError when none shows a face."""
        embeddings = _reference_embeddings(images)
        if len(embeddings) == 0:
            raise PortraitkitError("no face was found in any reference image: use the dataset made by `portraitkit prep`")
        return cls(embeddings)

    @classmethod
    def from_folder(cls, folder: str | Path) -> IdentityScorer:
        """From a prepared dataset (its metadata.jsonl images) or any folder of photos of the person."""
        from portraitkit.photos import PHOTO_SUFFIXES, open_photo

        folder = Path(folder)
        if not folder.is_dir():
            raise PortraitkitError(f"reference {folder} is not a folder: pass the dataset made by `portraitkit prep`")
        if (folder / "metadata.jsonl").is_file():
            from portraitkit.files import read_jsonl

            paths = [folder / row["file_name"] for row in read_jsonl(folder / "metadata.jsonl") if row.get("file_name")]
        else:
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith("."))
        images = []
        for path in paths:
            try:
                images.append(open_photo(path))
            except PortraitkitError:
                continue  # an unreadable reference is one fewer, not a failed ranking
        try:
            return cls.from_images(images)
        except PortraitkitError:
            raise PortraitkitError(f"no face was found in the reference images in {folder}: pass the dataset made by `portraitkit prep`") from None

    def distance(self, embedding: np.ndarray) -> float:
        """Mean distance to the reference faces (same calibration as one pair: <= 0.6 same person)."""
        return float(np.linalg.norm(self.reference - embedding, axis=1).mean())

    def score(self, image, penalties: Penalties = Penalties()) -> dict:
        """identity_distance, score, faces, blur, exposure, mean_luma and reasons of one image."""
        from portraitkit.diagnose import diagnose_image
        from portraitkit.faces import detect_faces, face_embedding
        from portraitkit.prep import PrepConfig

        found = detect_faces(image)
        if not found:
            return unscored("no face found")
        face = found[0]  # the largest: the subject of a portrait
        # Other detections count only when dlib is sure, as in prep (a badge can look like a face).
        others = [f for f in found[1:] if f.score >= PrepConfig.other_face_min_score]
        distance = self.distance(face_embedding(image, face))
        measures = diagnose_image(image, face).measures
        blur, exposure = measures["blur"], measures["exposure"]
        # The limits prep judges the training photos by: exposure by lost detail, so that a
        # well-exposed portrait of very dark skin is never marked down as "too dark".
        limits = PrepConfig()
        reasons, score = [], 1.0 - distance
        if distance > SAME_PERSON_THRESHOLD:
            reasons.append(f"looks like someone else (identity distance {distance:.2f}, the same person is at most {SAME_PERSON_THRESHOLD})")
            score -= penalties.different_person
        if others:
            reasons.append(f"{1 + len(others)} faces in the picture")
            score -= penalties.several_faces
        if blur.score is not None and blur.score > limits.max_blur:
            reasons.append(f"blurry face (blur {blur.score:.2f}, sharp faces measure under {limits.max_blur})")
            score -= penalties.blurry
        problem = _exposure_problem(exposure.detail, limits)
        if problem:
            reasons.append(problem)
            score -= penalties.badly_exposed
        return {"identity_distance": round(distance, 4), "score": round(max(0.0, score), 4), "faces": 1 + len(others),
                "blur": _rounded(blur.score), "exposure": _rounded(exposure.score),
                "mean_luma": _rounded(exposure.detail.get("mean_luma")), "reasons": reasons}


def _exposure_problem(detail: dict, limits) -> str | None:
    if detail["mean_luma"] < limits.min_face_luma:
        return f"face too dark (mean brightness {detail['mean_luma']:.2f})"
    if detail["mean_luma"] > limits.max_face_luma:
        return f"face too bright (mean brightness {detail['mean_luma']:.2f})"
    if detail["bright_clipped_frac"] > limits.max_bright_clipped:
        return f"{detail['bright_clipped_frac']:.0%} of the face blown out to white"
    if detail["dark_clipped_frac"] > limits.max_dark_clipped:
        return f"{detail['dark_clipped_frac']:.0%} of the face crushed to black"
    return None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# Reference embeddings by the pixels they came from: training scores every validation step
# against the same training images, which need embedding only once per process.
_EMBEDDINGS: dict[str, np.ndarray] = {}


def _identity_of_step(images: list, embeddings: np.ndarray, references: int) -> dict:
    """faces_found, mean_identity_distance and, where the step cannot be judged, the reason."""
    if len(embeddings) == 0:
        return {"reason": f"no face was found in the {references} training images, so there is nothing to compare with"}
    from portraitkit.faces import detect_faces, face_embedding

    scorer = IdentityScorer(embeddings)
    distances = []
    for image in images:
        found = detect_faces(image)
        if found:
            distances.append(scorer.distance(face_embedding(image, found[0])))
    if not distances:
        return {"reason": f"no face was found in the {len(images)} validation images"}
    row = {"faces_found": len(distances), "mean_identity_distance": round(float(np.mean(distances)), 4), "reason": None}
    if len(distances) * 2 < len(images):
        row["reason"] = (f"faces found in only {len(distances)} of {len(images)} validation images "
                         "(at least half are needed to judge a step)")
    return row


def _reference_embeddings(images: list) -> np.ndarray:
    from portraitkit.faces import detect_faces, face_embedding

    key = hashlib.sha1()
    for image in images:
        key.update(repr(image.size).encode())
        key.update(image.convert("RGB").tobytes())
    if key.hexdigest() not in _EMBEDDINGS:
        rows = []
        for image in images:
            found = detect_faces(image.convert("RGB"))
            if found:
                rows.append(face_embedding(image.convert("RGB"), found[0]))
        _EMBEDDINGS[key.hexdigest()] = np.array(rows, dtype=np.float64).reshape(-1, 128)
    return _EMBEDDINGS[key.hexdigest()]


def ranking_lines(ranking: list[dict], top: int) -> list[str]:
    """The first `top` rows of a ranking as lines of text: rank, score, identity distance, file, why."""
    lines = []
    for row in ranking[:top]:
        distance = "no face" if row["identity_distance"] is None else f"distance {row['identity_distance']:.2f}"
        why = f"  ({'; '.join(row['reasons'])})" if row["reasons"] else ""
        lines.append(f"#{row['rank']:<3} {row['score']:.2f}  {distance:<14} {row['file']}{why}")
    return lines


# --- the picks sheet --------------------------------------------------------------------------

CELL = 300  # picks-sheet cell: a 254 px picture (enough to judge a face) over two lines of caption
CAPTION = 46


def picks_sheet(images_dir: Path, rows: list[dict]):
    """The top images with their rank, score and identity distance written under each."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    from portraitkit.grids import image_grid
    from portraitkit.photos import open_photo

    font = ImageFont.load_default(size=15)
    tiles = []
    for row in rows:
        tile = Image.new("RGB", (CELL, CELL), "white")
        try:
            image = open_photo(images_dir / row["file"])  # upright, as it was scored
            # Small images (the tiny base's 64 px) are enlarged as crisp pixels, not smudged.
            method = Image.NEAREST if max(image.size) < CELL // 2 else Image.LANCZOS
            tile.paste(ImageOps.pad(image, (CELL, CELL - CAPTION), method=method, color="white"))
        except PortraitkitError:
            pass  # unreadable: its reason is in ranking.json, the caption still shows its place
        identity = "no usable face" if row["identity_distance"] is None else f"identity distance {row['identity_distance']:.2f}"
        name = row["file"] if len(row["file"]) <= 34 else row["file"][:16] + "..." + row["file"][-15:]
        draw = ImageDraw.Draw(tile)
        draw.text((6, CELL - CAPTION + 5), f"#{row['rank']}  score {row['score']:.2f}  {identity}", fill="black", font=font)
        draw.text((6, CELL - CAPTION + 24), name, fill="dimgray", font=font)
        tiles.append(tile)
    return image_grid(tiles, columns=min(4, len(tiles)))


# --- choosing the training checkpoint ---------------------------------------------------------


def score_validation_step(run_dir: Path, step: int, images: list, reference_images: list, final_step: int,
                          save_best: Callable[[Path], object]) -> dict:
    """Record how much `step`'s validation images look like the person, in run_dir/identity.json.

    A step qualifies as the best when faces were found in at least half of its images; the best
    is the one with the lowest mean identity distance. When `step` becomes the best, `save_best`
    is called with run_dir/best to keep its LoRA (old checkpoints are pruned). Nothing is ever
    guessed: without faces the distances are null and `reason` says why.
    """
    import json

    run_dir = Path(run_dir)
    path = run_dir / IDENTITY_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    steps = {row["step"]: row for row in record.get("steps", []) if row["step"] != step}

    row = {"step": step, "images": len(images), "faces_found": 0, "mean_identity_distance": None, "reason": None}
    embeddings = np.zeros((0, 128))
    try:
        embeddings = _reference_embeddings(reference_images)
        row.update(_identity_of_step(images, embeddings, len(reference_images)))
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
    from portraitkit.train import LORA_FILE

    record = {
        "reference_images": len(reference_images),
        "reference_faces": len(embeddings),
        "steps": [steps[s] for s in sorted(steps)],
        "best_step": best_step,
        "best_lora": f"{BEST_DIR}/{LORA_FILE}" if best_step is not None else None,
        "final_step": final_step,
        "final_lora": LORA_FILE,  # what the run writes when it finishes step `final_step`
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

