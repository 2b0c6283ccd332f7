"""Ranking portraits: does it look like the person, and is it a good picture?

Each image gets:
- its likeness (`identity_distance`): the distance of its face's dlib embedding to the centre of
  the person's faces (the reference set: the prepared dataset), the one likeness scale
  (`faces.likeness`) that training's validation and every page also show, and the person's
  band on it: `copying`, `you`, `unsure`, `someone else` (its words are the first reason);
- technical quality from `portraitkit.teach.diagnose` on the face region: sharpness and exposure,
  plus whether exactly one face is in the picture.

score = 1 - identity distance - penalties (below), so a higher score is better and likeness
counts most. A face turned beyond the judged range (`faces.pose`) is not judged, whoever it
shows ("turned too far to judge"), and, like an image without a face, ranks last. A portrait that
is a training photo given back (`copies`: the same photograph, found by the detector prep uses)
says so, names the photo, and ranks below every portrait of the person that is not a copy: it is
no new portrait (and above someone else, who is not the person at all).

Training's validation (`portraitkit.train.validate`) uses the same scale and band to tell which
step's images look most like the person; this module knows nothing of training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import save_image, write_json
from portraitkit.faces.likeness import LikenessBand, likeness_band, likeness_distances
from portraitkit.faces.photos import PixelMemo
from portraitkit.faces.proportions import Proportions
from portraitkit.pick.copies import TrainingPhotos
from portraitkit.pick.report import picks_sheet

RANKING_FILE = "ranking.json"
PICKS_SHEET = "picks.png"


@dataclass(frozen=True)
class Penalties:
    """What each problem costs in score (identity differences are 0.1-0.4 between good images)."""

    # Past the person's band, where other people begin: the picture shows someone else. Costs
    # more than any quality problem, since a sharp stranger is worth less than a soft likeness.
    different_person: float = 0.25
    # A second face: a portrait of the person should show only them (generated crowds, mirrors).
    several_faces: float = 0.1
    # Blurry face (diagnose's blur effect above its flag level): skin and eyes have no detail.
    blurry: float = 0.15
    # Face too dark or too bright, or large parts of it clipped to black or white.
    badly_exposed: float = 0.1
    # A training photo given back (`copies`): the person, but no new portrait. Whatever its
    # score, `order` puts it below every portrait that is not a copy.
    copies_training_photo: float = 0.3
    # Proportions beyond the person's own (`faces.proportions`): the selfie nose a LoRA learned
    # from close photos, drawn as the face. Less than a stranger, about a blurry face.
    different_proportions: float = 0.1


def rank_images(images_dir: str | Path, reference_dir: str | Path, top: int = 8, penalties: Penalties = Penalties(),
                scorer: IdentityScorer | None = None) -> list[dict]:
    """Score and rank every image in `images_dir` against the person in `reference_dir` (or `scorer`, made from it).

    Writes `images_dir/ranking.json` (best first) and `images_dir/picks.png` (the top `top`).
    Uses `images_dir/manifest.json` when present (its files, and their style and seed).
    """
    from tqdm.auto import tqdm

    from portraitkit.faces.photos import open_photo

    images_dir = Path(images_dir)
    if top < 1:
        raise PortraitkitError("--top must be at least 1")
    listed = image_files(images_dir)
    scorer = scorer or IdentityScorer.from_folder(reference_dir)
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
    """Judged faces of the person by score (best first), then copies of training photos (the
    person, but no new portrait), then someone else, then the unjudged; `rank` 1 is the best."""

    def tier(row: dict) -> int:
        if row["identity_distance"] is None:
            return 3
        if row.get("copies") is not None:
            return 1
        return 2 if row.get("likeness") == "someone else" else 0

    ranked = sorted(rows, key=lambda r: (tier(r), -r["score"], r["identity_distance"] or 0, r["file"]))
    return [{"file": r["file"], "rank": i, **{k: v for k, v in r.items() if k != "file"}} for i, r in enumerate(ranked, 1)]


def with_copy(row: dict, copied) -> dict:
    """An unjudged row that is nonetheless a training photo given back says so."""
    if copied is not None:
        row["reasons"].append(copied.reason())
        row["copies"] = copied.photo
    return row


def unscored(reason: str, faces: int = 0) -> dict:
    return {"identity_distance": None, "likeness": None, "score": 0.0, "faces": faces, "blur": None, "exposure": None,
            "mean_luma": None, "reasons": [reason], "copies": None, "proportions": None}


# --- the scorer -------------------------------------------------------------------------------


class IdentityScorer:
    """Scores images against embeddings of the person's reference faces, on the one likeness scale."""

    def __init__(self, reference: np.ndarray, copies: TrainingPhotos | None = None, proportions: Proportions | None = None):
        self.reference = np.asarray(reference, dtype=np.float64).reshape(-1, 128)
        self.band: LikenessBand = likeness_band(self.reference)
        self.copies = copies  # the training crops a portrait may copy (`from_folder` gives them)
        self.proportions = proportions  # the person's (`from_folder`: prep's report.json), portraits compared against them

    @classmethod
    def from_images(cls, images: list, names: list[str] | None = None) -> IdentityScorer:
        """From PIL images of the person (`names`: theirs, to name a copied one); raises
        PortraitkitError when none shows a face."""
        embeddings = reference_embeddings(images)
        if len(embeddings) == 0:
            raise PortraitkitError("no face was found in any reference image: use the dataset made by `portraitkit prep`")
        names = names if names is not None else [f"training image {n}" for n in range(1, len(images) + 1)]
        return cls(embeddings, TrainingPhotos(names, images))

    @classmethod
    def from_folder(cls, folder: str | Path) -> IdentityScorer:
        """From a prepared dataset (its metadata.jsonl images) or any folder of photos of the person."""
        from portraitkit.faces.photos import PHOTO_SUFFIXES, open_photo

        folder = Path(folder)
        if not folder.is_dir():
            raise PortraitkitError(f"reference {folder} is not a folder: pass the dataset made by `portraitkit prep`")
        if (folder / "metadata.jsonl").is_file():
            from portraitkit.core.files import dataset_rows

            paths = [folder / row["file_name"] for row in dataset_rows(folder) if row.get("file_name")]
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
            scorer = cls.from_images(images, names)
        except PortraitkitError:
            raise PortraitkitError(f"no face was found in the reference images in {folder}: pass the dataset made by `portraitkit prep`") from None
        scorer.proportions = person_proportions_of(folder, images)
        return scorer

    def distance(self, embedding: np.ndarray) -> float:
        """The likeness scale: distance to the centre of the reference faces (lower is more alike)."""
        return float(likeness_distances(embedding, self.reference)[0])

    def score(self, image, penalties: Penalties = Penalties()) -> dict:
        """identity_distance, likeness (the band's zone), score, faces, blur, exposure, mean_luma,
        reasons and copies of one image."""
        from portraitkit.faces.detect import detect_faces, face_embedding
        from portraitkit.faces.pose import turned_too_far
        from portraitkit.faces.quality import FaceLimits
        from portraitkit.teach.diagnose import measure_image

        # A training photo given back is a copy whether or not its face can be judged.
        copied = self.copies.copies(image) if self.copies is not None else None
        found = detect_faces(image)
        if not found:
            return with_copy(unscored("no face found"), copied)
        face = found[0]  # the largest: the subject of a portrait
        # Other detections count only when dlib is sure, as in prep (a badge can look like a face).
        others = [f for f in found[1:] if f.score >= FaceLimits.other_face_min_score]
        turned = turned_too_far(face)
        if turned:  # beyond where the embedding tells people apart: not judged, for anyone
            return with_copy(unscored(turned, faces=1 + len(others)), copied)
        distance = self.distance(face_embedding(image, face))
        zone = self.band.zone(distance)
        blur, exposure = measure_image(image, "blur", face), measure_image(image, "exposure", face)  # what a pick weighs
        # The limits prep judges the training photos by: exposure by lost detail, so that a
        # well-exposed portrait of very dark skin is never marked down as "too dark".
        limits = FaceLimits()
        reasons, score = [self.band.words(distance)], 1.0 - distance
        if zone == "someone else":
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
        if copied is not None:
            reasons.append(copied.reason())
            score -= penalties.copies_training_photo
        proportions = self.compare_proportions(face)
        if said := proportions_reason(proportions):
            reasons.append(said)
            score -= penalties.different_proportions
        return {"identity_distance": round(distance, 4), "likeness": zone, "score": round(max(0.0, score), 4),
                "faces": 1 + len(others), "blur": _rounded(blur.score), "exposure": _rounded(exposure.score),
                "mean_luma": _rounded(exposure.detail.get("mean_luma")), "reasons": reasons,
                "copies": copied.photo if copied is not None else None, "proportions": proportions}

    def compare_proportions(self, face) -> dict | None:
        """The face's proportions against the person's (`Proportions.compare`), or why not measured;
        None when the person's are unknown."""
        from portraitkit.faces.proportions import measure, not_measured

        if self.proportions is None:
            return None
        why = not_measured(face)
        return {"not_measured": why} if why else self.proportions.compare(measure(face.landmarks))


def proportions_reason(proportions: dict | None) -> str | None:
    """A portrait's proportions beyond the person's, in the course's words: "nose 18% wider against
    the face than yours, as a selfie at about 35 cm would show it"; None when within."""
    from portraitkit.faces.proportions import MEASURED_SHARE
    from portraitkit.teach.lens import distance_for_nose_change

    width = (proportions or {}).get("nose_width")
    if not width or not width["beyond"]:
        return None
    change = width["difference_pct"]
    if change < 0:
        return f"nose {-change:.0f}% narrower against the face than yours"
    near = distance_for_nose_change(change / MEASURED_SHARE)
    return (f"nose {change:.0f}% wider against the face than yours"
            + (f", as a selfie at about {near:.0f} cm would show it" if near else ", more than any camera distance explains"))


def person_proportions_of(folder: Path, images: list) -> Proportions | None:
    """The person's proportions: prep's (report.json, corrected to a distant camera) for a
    prepared dataset, else measured on the reference images as they are."""
    import json

    from portraitkit.faces.detect import detect_faces
    from portraitkit.faces.proportions import measure, not_measured, person_proportions

    report = folder / "report.json"
    if report.is_file():
        try:
            recorded = json.loads(report.read_text(encoding="utf-8")).get("proportions")
            if recorded:
                return Proportions.from_dict(recorded)
        except (ValueError, KeyError, TypeError):
            pass  # a damaged report: measure the photos themselves
    from portraitkit.faces.photos import pixels_key

    def measured() -> Proportions | None:
        faces = [found[0] for found in map(detect_faces, images) if found]
        return person_proportions([measure(f.landmarks) for f in faces if not_measured(f) is None],
                                  "the reference photos as taken (no camera distances known)")

    return _PROPORTIONS.get(pixels_key(*images), measured)  # validation asks at every validated step: measured once


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


# Reference embeddings by the pixels they came from: training's validation scores every step
# against the same training images, which need embedding only once per process.
_EMBEDDINGS = PixelMemo(16)
_PROPORTIONS = PixelMemo(16)  # the same for proportions measured on reference images


def reference_embeddings(images: list) -> np.ndarray:
    """dlib embeddings of the largest face in each image that has one, shape (faces, 128)."""
    from portraitkit.faces.detect import detect_faces, face_embedding
    from portraitkit.faces.photos import pixels_key

    def embedded() -> np.ndarray:
        rows = []
        for image in images:
            found = detect_faces(image.convert("RGB"))
            if found:
                rows.append(face_embedding(image.convert("RGB"), found[0]))
        return np.array(rows, dtype=np.float64).reshape(-1, 128)

    return _EMBEDDINGS.get(pixels_key(*images), embedded)
