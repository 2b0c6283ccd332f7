"""Ranking portraits: does it look like the person, and is it a good picture?

Each image gets:
- an identity distance: the mean dlib embedding distance between its face and every face of the
  reference set (the prepared dataset, i.e. photos of the person). The mean of pairwise
  distances keeps dlib's calibration: 0.6 or less means the same person (99.38% on LFW,
  ageitgey/face_recognition README);
- technical quality from `portraitkit.teach.diagnose` on the face region: sharpness and exposure,
  plus whether exactly one face is in the picture.

score = 1 - identity distance - penalties (below), so a higher score is better and likeness
counts most; images without a usable face score 0 and are ranked last with the reason. A
portrait that reproduces a training photo (`copies`: the whole picture, not just the face) has
the reason `copies_training_photo: ...` naming the photo, and `copies` in its row names it too.

Training's validation (`portraitkit.train.validate`) uses the same scorer to tell which step's images
look most like the person; this module knows nothing of training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portraitkit.pick.copies import CopyDetector
from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.detect import SAME_PERSON_THRESHOLD
from portraitkit.core.files import save_image, write_json

RANKING_FILE = "ranking.json"
PICKS_SHEET = "picks.png"


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
    # A training photo given back (`copies`): the person, but no new portrait. Ranked below the
    # person in new scenes (a copy's likeness is as high as it gets), above someone else.
    copies_training_photo: float = 0.3


def rank_images(images_dir: str | Path, reference_dir: str | Path, top: int = 8, penalties: Penalties = Penalties()) -> list[dict]:
    """Score and rank every image in `images_dir` against the person in `reference_dir`.

    Writes `images_dir/ranking.json` (best first) and `images_dir/picks.png` (the top `top`).
    Uses `images_dir/manifest.json` when present (its files, and their style and seed).
    """
    from tqdm.auto import tqdm

    from portraitkit.faces.photos import open_photo

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

    from portraitkit.faces.photos import PHOTO_SUFFIXES

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
            "reasons": [reason], "copies": None}


# --- the scorer -------------------------------------------------------------------------------


class IdentityScorer:
    """Scores images against embeddings of the person's reference faces."""

    def __init__(self, reference: np.ndarray, copies: CopyDetector | None = None):
        self.reference = np.asarray(reference, dtype=np.float64).reshape(-1, 128)
        self.copies = copies  # the training crops a portrait may copy (`from_folder` gives them)

    @classmethod
    def from_images(cls, images: list) -> IdentityScorer:
        """From PIL images of the person; raises PortraitkitError when none shows a face."""
        embeddings = reference_embeddings(images)
        if len(embeddings) == 0:
            raise PortraitkitError("no face was found in any reference image: use the dataset made by `portraitkit prep`")
        return cls(embeddings)

    @classmethod
    def from_folder(cls, folder: str | Path) -> IdentityScorer:
        """From a prepared dataset (its metadata.jsonl images) or any folder of photos of the person."""
        from portraitkit.faces.photos import PHOTO_SUFFIXES, open_photo

        folder = Path(folder)
        if not folder.is_dir():
            raise PortraitkitError(f"reference {folder} is not a folder: pass the dataset made by `portraitkit prep`")
        if (folder / "metadata.jsonl").is_file():
            from portraitkit.core.files import read_jsonl

            paths = [folder / row["file_name"] for row in read_jsonl(folder / "metadata.jsonl") if row.get("file_name")]
        else:
            paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith("."))
        images, names = [], []
        for path in paths:
            try:
                images.append(open_photo(path))
                names.append(path.name)
            except PortraitkitError:
                continue  # an unreadable reference is one fewer, not a failed ranking
        try:
            scorer = cls.from_images(images)
        except PortraitkitError:
            raise PortraitkitError(f"no face was found in the reference images in {folder}: pass the dataset made by `portraitkit prep`") from None
        scorer.copies = CopyDetector(names, images)
        return scorer

    def distance(self, embedding: np.ndarray) -> float:
        """Mean distance to the reference faces (same calibration as one pair: <= 0.6 same person)."""
        return float(np.linalg.norm(self.reference - embedding, axis=1).mean())

    def score(self, image, penalties: Penalties = Penalties()) -> dict:
        """identity_distance, score, faces, blur, exposure, mean_luma and reasons of one image."""
        from portraitkit.teach.diagnose import measure_image
        from portraitkit.faces.detect import detect_faces, face_embedding
        from portraitkit.faces.quality import FaceLimits

        found = detect_faces(image)
        if not found:
            return unscored("no face found")
        face = found[0]  # the largest: the subject of a portrait
        if not face.landmarks_fit:  # a head turned towards profile: its embedding would be read from misplaced points
            return unscored("face turned too far to the side to judge its likeness")
        # Other detections count only when dlib is sure, as in prep (a badge can look like a face).
        others = [f for f in found[1:] if f.score >= FaceLimits.other_face_min_score]
        distance = self.distance(face_embedding(image, face))
        blur, exposure = measure_image(image, "blur", face), measure_image(image, "exposure", face)  # what a pick weighs
        # The limits prep judges the training photos by: exposure by lost detail, so that a
        # well-exposed portrait of very dark skin is never marked down as "too dark".
        limits = FaceLimits()
        reasons, score = [], 1.0 - distance
        if distance > SAME_PERSON_THRESHOLD:
            reasons.append(f"looks like someone else (identity distance {distance:.2f}, the same person is at most {SAME_PERSON_THRESHOLD})")
            score -= penalties.different_person
        if others:
            reasons.append(f"{1 + len(others)} faces in the picture")
            score -= penalties.several_faces
        if limits.blurry(blur.score):
            reasons.append(f"blurry face (blur {blur.score:.2f}, sharp faces measure under {limits.max_blur})")
            score -= penalties.blurry
        problems = limits.exposure_problems(exposure.detail)
        if problems:
            reasons.append(problems[0][1])  # one sentence is enough: brightness before clipping
            score -= penalties.badly_exposed
        copied = self.copies.copies(image, face) if self.copies is not None else None
        if copied is not None:
            reasons.append(copied.reason())
            score -= penalties.copies_training_photo
        return {"identity_distance": round(distance, 4), "score": round(max(0.0, score), 4), "faces": 1 + len(others),
                "blur": _rounded(blur.score), "exposure": _rounded(exposure.score),
                "mean_luma": _rounded(exposure.detail.get("mean_luma")), "reasons": reasons,
                "copies": copied.photo if copied is not None else None}


def centroid_distances(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each embedding's distance to the centre of the reference faces: how like the person as a
    whole, rather than like one photo (the centre of several photos is no photo at all)."""
    return np.linalg.norm(np.reshape(embeddings, (-1, 128)) - np.mean(reference, axis=0), axis=1)


def nearest_distances(embeddings: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each embedding's distance to the nearest reference face."""
    pairs = np.reshape(embeddings, (-1, 1, 128)) - np.reshape(reference, (1, -1, 128))
    return np.linalg.norm(pairs, axis=2).min(axis=1)


def leave_one_out_distance(reference: np.ndarray) -> float | None:
    """How alike the person's own photos are: each face's distance to the centre of the others,
    averaged (None with fewer than two faces). Two real photos of one person are never at 0, so
    this is the likeness a portrait can honestly reach: far below it is copying, not likeness."""
    reference = np.reshape(reference, (-1, 128))
    count = len(reference)
    if count < 2:
        return None
    others = (reference.sum(axis=0) - reference) / (count - 1)
    return float(np.linalg.norm(reference - others, axis=1).mean())


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# Reference embeddings by the pixels they came from: training's validation scores every step
# against the same training images, which need embedding only once per process.
_EMBEDDINGS: dict[str, np.ndarray] = {}


def reference_embeddings(images: list) -> np.ndarray:
    """dlib embeddings of the largest face in each image that has one, shape (faces, 128)."""
    from portraitkit.faces.detect import detect_faces, face_embedding

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
        distance = "no face found" if row["identity_distance"] is None else f"distance {row['identity_distance']:.2f}"
        why = f"  ({'; '.join(row['reasons'])})" if row["reasons"] else ""
        lines.append(f"#{row['rank']:<3} {row['score']:.2f}  {distance:<14} {row['file']}{why}")
    return lines


# --- the picks sheet --------------------------------------------------------------------------

CELL = 300  # picks-sheet cell: a 254 px picture (enough to judge a face) over two lines of caption
CAPTION = 46


def picks_sheet(images_dir: Path, rows: list[dict]):
    """The top images with their rank, score and identity distance written under each."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    from portraitkit.core.grids import image_grid
    from portraitkit.faces.photos import open_photo

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
        identity = "no face found" if row["identity_distance"] is None else f"identity distance {row['identity_distance']:.2f}"
        name = row["file"] if len(row["file"]) <= 34 else row["file"][:16] + "..." + row["file"][-15:]
        draw = ImageDraw.Draw(tile)
        draw.text((6, CELL - CAPTION + 5), f"#{row['rank']}  score {row['score']:.2f}  {identity}", fill="black", font=font)
        draw.text((6, CELL - CAPTION + 24), name, fill="dimgray", font=font)
        tiles.append(tile)
    return image_grid(tiles, columns=min(4, len(tiles)))
