"""Preparation: from a folder of casual photos to a checked, captioned training set.

    result = prepare("photos/", "dataset/", PrepConfig(token="sks", class_word="person"))

The most common reason a personal LoRA looks unlike its owner is a bad training set, so every
photo is checked, and every decision is written down with the measurements behind it:

1. open it safely (`photos.open_photo`: formats, EXIF orientation, 16-bit, alpha, huge files);
2. find the face (`faces.detect_faces`): none, several of similar size, or one too small to
   train on without enlarging it into mush are rejections;
3. measure it (`diagnose.diagnose_image` on the face): blur and bad exposure are rejections;
   colour cast, harsh shadows, compression, noise and sharpening halos are warnings;
4. compare the set: a face that is not the person most of the set shows is `different_person`
   (the set's consensus decides, not the first file); the same shot twice is `duplicate`;
5. crop a square around the face with head-and-shoulders margins, straightened by the eye line,
   resized with LANCZOS, and caption it "a photo of <token> <class word>" plus measured words.

Outputs in the dataset folder (see `prepare`): the prepared PNGs and `metadata.jsonl` (a Hugging
Face `imagefolder`), `report.json` and `contact_sheet.png`. A file that cannot be read, or any
other failure on one photo, is recorded against that photo and the run goes on.
"""

from __future__ import annotations

import math
import re
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from portraitkit import files
from portraitkit.errors import PortraitkitError
from portraitkit.faces import SAME_PERSON_THRESHOLD
from portraitkit.photos import DEFAULT_MAX_PIXELS, PHOTO_SUFFIXES

# Stable reason codes (report.json) and how the contact sheet says them. Order = report order.
REJECTIONS = {
    "unreadable": "cannot be read",
    "processing_error": "could not be processed",
    "no_face": "no face found",
    "multiple_faces": "several faces, none dominant",
    "face_too_small": "face too small",
    "blurry": "blurry",
    "underexposed": "too dark",
    "overexposed": "too bright",
    "different_person": "a different person",
    "duplicate": "duplicate",
}
WARNINGS = {
    "low_resolution": "enlarged",
    "tight_crop": "cropped tight",
    "off_centre": "face near the edge",
    "color_cast": "colour cast",
    "harsh_shadows": "harsh shadows",
    "blown_highlights": "blown highlights",
    "crushed_shadows": "crushed shadows",
    "compressed": "JPEG blocks",
    "noisy": "grainy",
    "oversharpened": "over-sharpened",
}

STAGING = ".prep-staging"  # hidden, so imagefolder never reads half-finished work


@dataclass
class PrepConfig:
    """Settings of `prepare`. Each threshold says what it guards against and where it comes from."""

    resolution: int = 512  # side of the square training images: 512 for SD 1.5, 1024 for SDXL
    token: str = "sks"  # the rare word that comes to mean "this person" (DreamBooth's convention)
    class_word: str = "person"  # what the token is a kind of: person, man, woman, child...
    # DreamBooth (Ruiz et al. 2022) personalises from 3-5 photos; with fewer than 5 a LoRA
    # memorises the few shots (their pose, clothes and background) instead of learning the face.
    min_accepted: int = 5
    # Person-LoRA recipes ask for 10-20 photos (FACTS.md: ~100-200 steps per photo); fewer than
    # this many gets advice to add more, but still trains.
    recommended: int = 10

    # --- crop -----------------------------------------------------------------------------------
    # Square side as a multiple of the face width (jaw point 0 to 16): the head (about 1.5 face
    # widths tall) fills about half the frame, leaving the shoulders in: a head-and-shoulders
    # portrait, the framing the sampling stage's prompts ask for.
    crop_scale: float = 2.8
    eye_line_height: float = 0.40  # eyes 40% down from the top: headroom above, shoulders below
    # Enlarging more than 2x invents detail the LoRA then learns as the person's skin: reject.
    max_upscale: float = 2.0
    # Enlarging by more than 15% is reported as a `low_resolution` warning; less is invisible
    # after a LANCZOS resize (it is still recorded in the measurements as `crop.upscale`).
    warn_upscale: float = 1.15
    # A crop that had to shrink below this share of its intended size (face at the photo's edge
    # or filling the frame) is kept but warned about and captioned "close-up".
    tight_crop_fraction: float = 0.75
    # A square the photo's edge pushed more than this share of its side away from where the face
    # wanted it: the face sits far off the usual place (the samples, cut close above the head,
    # measure up to 0.2). Kept, but warned about.
    max_off_centre: float = 0.25

    # --- faces ----------------------------------------------------------------------------------
    # The largest face counts as dominant when the next one is at most 1/1.5 of its width: the
    # person photographed, with someone further back. Closer in size, we cannot tell who is meant.
    dominant_face_ratio: float = 1.5
    # A second detection only competes when dlib is sure it is a face: clear faces score about
    # 1-2, textures that happen to look like a face (a mission patch on a suit) below 0.3.
    other_face_min_score: float = 0.5

    # --- quality (measured by portraitkit.diagnose on the face region) ----------------------------
    # Blur effect above 0.5 (diagnose's own flag level): eyelashes and skin texture are gone;
    # training on it teaches the LoRA a soft, waxy face.
    max_blur: float = 0.5
    # Exposure is judged on lost detail (clipped pixels), not on mean brightness alone, so that
    # a well-exposed photo of very dark skin is never called underexposed. 15% of the face
    # region crushed to black or blown to white is a face the LoRA cannot learn from.
    max_dark_clipped: float = 0.15
    max_bright_clipped: float = 0.15
    # ...and a face whose mean luma (0-1, gamma-encoded) is below 0.12 is dark for any skin:
    # well-exposed very dark skin measures about 0.2-0.3.
    min_face_luma: float = 0.12
    max_face_luma: float = 0.90

    # --- the set -----------------------------------------------------------------------------------
    same_person_threshold: float = SAME_PERSON_THRESHOLD  # dlib's 0.6: 99.38% on LFW
    # Near-duplicates: 64-bit perceptual hashes (DCT of a 32x32 grey thumbnail) differing in at
    # most 6 bits. Re-saving and resizing change 0-4 (the sample duplicate, a 15% downscale at
    # JPEG quality 70: 2); a different framing of the same scene changed 10 or more.
    max_hash_distance: int = 6
    # ...and faces this close in identity: the same shot re-saved measures about 0.1, two
    # different photos of one person about 0.3-0.5. Guards against two shots in the same pose
    # against the same plain wall.
    max_duplicate_identity_distance: float = 0.3

    max_pixels: int = DEFAULT_MAX_PIXELS  # photos above this are downscaled when opened


@dataclass
class PrepResult:
    """What `prepare` did: per-photo entries as written to report.json, a summary, the variety."""

    out_dir: Path
    entries: list[dict[str, Any]]
    summary: dict[str, Any]
    variety: dict[str, Any]

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["status"] == "accepted"]

    @property
    def enough(self) -> bool:
        return self.summary["enough_to_train"]

    @property
    def message(self) -> str:
        """One sentence: how many photos are usable and, when too few, what to add."""
        return self.summary["message"]


@dataclass
class _Photo:
    """Everything learned about one input while the set is examined."""

    source: str
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)
    message: str | None = None
    thumbnail: Image.Image | None = None
    thumb_scale: float = 1.0
    crop_corners: np.ndarray | None = None  # the crop square in photo pixels, for the contact sheet
    face_box: tuple[int, int, int, int] | None = None
    staged: Path | None = None
    embedding: np.ndarray | None = None
    phash: np.ndarray | None = None
    caption_words: list[str] = field(default_factory=list)
    duplicate_of: str | None = None
    output: str | None = None

    def add(self, code: str) -> None:
        if code not in self.reasons:
            self.reasons.append(code)

    @property
    def status(self) -> str:
        return "rejected" if self.reasons else "accepted"


def prepare(photos_dir: str | Path, out_dir: str | Path, config: PrepConfig | None = None) -> PrepResult:
    """Check, crop and caption every photo in `photos_dir` (and its sub-folders) into `out_dir`.

    Writes to `out_dir`:
    - one `<name>.png` per accepted photo, `config.resolution` pixels square;
    - `metadata.jsonl`: `{"file_name", "text"}` per accepted photo, so
      `datasets.load_dataset("imagefolder", data_dir=out_dir)` gives `image` and `text` columns;
    - `report.json`: per input `source`, `status`, `reasons`, `warnings`, `output`, `caption` and
      `measurements`, plus `summary`, `variety` and the `config` used;
    - `contact_sheet.png`: every input as a thumbnail, marked accepted or rejected, in words.

    Raises `PortraitkitError` when the folders are unusable or hold no photos at all; problems
    with single photos are recorded in the report instead. Prepared images from an earlier run
    into the same `out_dir` that this run does not accept are removed, so the dataset is exactly
    what report.json says.
    """
    from tqdm.auto import tqdm

    from portraitkit import faces

    config = config or PrepConfig()
    _check_config(config)
    photos_dir, out_dir = Path(photos_dir), Path(out_dir)
    inputs, ignored = _find_inputs(photos_dir, out_dir)
    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
    staging.mkdir()
    faces.models_dir()  # a missing model is the user's to fix once, not one "error" per photo

    photos = []
    for index, path in enumerate(tqdm(inputs, desc="prep", unit="photo")):
        staged = staging / f"{index:05d}.png"
        photos.append(_examine_safely(path, _printable(path.relative_to(photos_dir).as_posix()), staged, config))

    # Duplicates first: the same shot saved three times must count once in the identity vote.
    _check_duplicates(photos, config)
    _check_identity(photos, config)
    _publish(photos, out_dir, staging, config)

    accepted = [p for p in photos if p.status == "accepted"]
    variety = _variety(accepted, config)
    summary = _summary(photos, ignored, config)
    entries = [_entry(p, config) for p in photos]
    files.write_jsonl(out_dir / "metadata.jsonl", [{"file_name": p.output, "text": _caption(p, config)} for p in accepted])
    files.save_image(out_dir / "contact_sheet.png", _contact_sheet(photos, summary), optimize=True)
    files.write_json(
        out_dir / "report.json",
        _jsonable({"summary": summary, "variety": variety, "photos": entries, "config": vars(config)}),
    )
    shutil.rmtree(staging, ignore_errors=True)
    return PrepResult(out_dir=out_dir, entries=entries, summary=summary, variety=variety)


# --- finding the inputs -----------------------------------------------------------------------


def _check_config(config: PrepConfig) -> None:
    if not (128 <= config.resolution <= 2048 and config.resolution % 8 == 0):
        raise PortraitkitError(
            f"--resolution {config.resolution} is not usable: choose a multiple of 8 between 128 and 2048 "
            "(512 for SD 1.5, 1024 for SDXL)."
        )
    for name in ("token", "class_word"):
        value = getattr(config, name)
        if not value.strip() or "\n" in value:
            raise PortraitkitError(f"The {name.replace('_', ' ')} {value!r} is empty or has a line break: use a short word.")


def _printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (a name from an old camera or a Windows zip)
    become U+FFFD instead of breaking report.json."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _check_out_dir(out_dir: Path) -> None:
    """The dataset folder is new, empty, or one prep wrote before (it then replaces its images)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PortraitkitError(f"{out_dir} is a file: give a folder for the dataset with --out.")
    if out_dir.is_dir() and not (out_dir / "report.json").is_file() and any(
            not entry.name.startswith(".") for entry in out_dir.iterdir()):
        raise PortraitkitError(f"{out_dir} already holds files that prep did not write: choose a new or empty --out folder.")


def _find_inputs(photos_dir: Path, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Photo files under `photos_dir` (sorted, hidden ones and the dataset folder skipped) and the rest."""
    if not photos_dir.is_dir():
        raise PortraitkitError(f"{photos_dir} is not a folder: give the folder that holds your photos.")
    if out_dir.resolve() == photos_dir.resolve():
        raise PortraitkitError("The dataset folder must differ from the photos folder: choose another --out.")
    dataset_inside = photos_dir.resolve() in out_dir.resolve().parents
    inputs, ignored = [], []
    for path in sorted(photos_dir.rglob("*")):
        relative = path.relative_to(photos_dir)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue  # .DS_Store, ._IMG (macOS), .ipynb_checkpoints, our own staging folder
        if dataset_inside and out_dir.resolve() in path.resolve().parents:
            continue  # a dataset folder inside the photos folder: our own outputs
        if path.suffix.lower() in PHOTO_SUFFIXES:
            inputs.append(path)
        else:
            ignored.append(_printable(relative.as_posix()))
    if not inputs:
        raise PortraitkitError(
            f"No photos found in {photos_dir}: add 10-20 JPEG, PNG, WEBP or HEIC photos of the person."
        )
    return inputs, ignored


# --- one photo ----------------------------------------------------------------------------------


def _examine_safely(path: Path, source: str, staged: Path, config: PrepConfig) -> _Photo:
    """`_examine`, with any failure recorded on the photo instead of ending the run."""
    photo = _Photo(source=source)
    try:
        _examine(photo, path, staged, config)
    except PortraitkitError:
        raise  # a set-up problem (dlib or its models missing): every photo would fail alike
    except MemoryError:
        photo.add("unreadable")
        photo.message = f"{path.name} needs more memory than is available: resize it first."
    except Exception as error:  # a bug or a library failure on one odd file: keep the others
        photo.add("processing_error")
        photo.message = f"{type(error).__name__}: {error}"
    return photo


def _examine(photo: _Photo, path: Path, staged: Path, config: PrepConfig) -> None:
    """Open, detect, measure and crop one photo, recording what was found on `photo`.

    The crop is written to `staged` only when nothing so far rules the photo out; the set-wide
    checks (identity, duplicates) may still reject it.
    """
    from portraitkit.diagnose import Thresholds, diagnose_image
    from portraitkit.faces import detect_faces, face_embedding
    from portraitkit.photos import open_photo

    try:
        image = open_photo(path, max_pixels=config.max_pixels)
    except PortraitkitError as error:  # the file itself: truncated, empty, not an image, too large
        photo.add("unreadable")
        photo.message = str(error)
        return
    photo.measurements.update(width=image.width, height=image.height)
    photo.thumbnail = image.copy()
    photo.thumbnail.thumbnail((_CELL, _CELL), Image.Resampling.BOX)
    photo.thumb_scale = photo.thumbnail.width / image.width
    photo.phash = _perceptual_hash(photo.thumbnail)
    photo.measurements["perceptual_hash"] = _hex(photo.phash)

    found = detect_faces(image)
    photo.measurements["faces_found"] = len(found)
    if not found:
        photo.add("no_face")
        return
    face = found[0]
    photo.face_box = face.box
    rivals = [
        other for other in found[1:]
        if other.score >= config.other_face_min_score and other.width * config.dominant_face_ratio > face.width
    ]
    if rivals:
        photo.add("multiple_faces")
    geometry = _face_geometry(face.landmarks)
    photo.measurements["face"] = {"box": list(face.box), "score": face.score, **geometry}

    diagnosis = diagnose_image(image, face)
    photo.measurements["quality"] = diagnosis.to_dict()
    _judge_quality(photo, diagnosis, Thresholds(), config)

    crop, corners, crop_info = _crop(image, face, geometry, config)
    photo.crop_corners = corners
    photo.measurements["crop"] = crop_info
    if crop_info["upscale"] > config.max_upscale:
        photo.add("face_too_small")
    elif crop_info["upscale"] > config.warn_upscale:
        photo.warnings.append("low_resolution")
    if crop_info["fraction_of_intended"] < config.tight_crop_fraction:
        photo.warnings.append("tight_crop")
    if crop_info["off_centre"] > config.max_off_centre:
        photo.warnings.append("off_centre")

    if not rivals:  # with two similar faces we do not know whose identity this is
        photo.embedding = face_embedding(image, face)
    photo.measurements["look"] = _look(crop, face.landmarks, geometry)
    photo.caption_words = _caption_words(photo, diagnosis)
    if not photo.reasons:  # only photos that may be accepted are worth writing
        files.save_image(staged, crop)
        photo.staged = staged


def _judge_quality(photo: _Photo, diagnosis, warn, config: PrepConfig) -> None:
    """Rejections from blur and exposure; warnings from the softer problems diagnose measures."""
    measures = diagnosis.measures
    exposure = measures["exposure"].detail
    if measures["blur"].score is not None and measures["blur"].score > config.max_blur:
        photo.add("blurry")
    if exposure["dark_clipped_frac"] > config.max_dark_clipped or exposure["mean_luma"] < config.min_face_luma:
        photo.add("underexposed")
    elif exposure["dark_clipped_frac"] > warn.dark_clipped_frac:
        photo.warnings.append("crushed_shadows")
    if exposure["bright_clipped_frac"] > config.max_bright_clipped or exposure["mean_luma"] > config.max_face_luma:
        photo.add("overexposed")
    elif exposure["bright_clipped_frac"] > warn.bright_clipped_frac:
        photo.warnings.append("blown_highlights")
    soft = {
        "color_cast": ("color_cast", warn.color_cast),
        "shadow_harshness": ("harsh_shadows", warn.shadow_stops),
        "jpeg_blockiness": ("compressed", warn.jpeg_blockiness),
        "noise": ("noisy", warn.noise),
        "oversharpening": ("oversharpened", warn.oversharpening),
    }
    for measure, (code, limit) in soft.items():
        score = measures[measure].score
        if score is not None and score > limit:
            photo.warnings.append(code)


def _face_geometry(landmarks: np.ndarray) -> dict[str, float]:
    """Size and pose of a face from its 68 landmarks (iBUG order), in photo pixels and degrees."""
    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    roll = math.degrees(math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    # Work in the face's own upright frame so a tilted head does not read as a turned one.
    c, s = math.cos(math.radians(roll)), math.sin(math.radians(roll))
    upright = (landmarks - landmarks.mean(axis=0)) @ np.array([[c, -s], [s, c]])
    jaw_left, jaw_right, nose_tip = upright[0], upright[16], upright[30]
    width = float(np.linalg.norm(landmarks[16] - landmarks[0]))
    # Yaw from a cylinder model of the head: the nose tip stands about one head-radius in front
    # of the axis, so its offset from the midpoint of the jaw ends, over half the jaw width, is
    # sin(yaw). Rough (faces are not cylinders), but enough to tell frontal from three-quarter views.
    offset = (nose_tip[0] - (jaw_left[0] + jaw_right[0]) / 2) / max(width / 2, 1.0)
    yaw = math.degrees(math.asin(float(np.clip(offset, -1.0, 1.0))))
    # Pitch index: where the nose tip sits between the eye line and the chin (about 0.4 when
    # level; larger looking down, smaller looking up). An index, not degrees.
    eye_y = (upright[36:48, 1]).mean()
    pitch_index = (nose_tip[1] - eye_y) / max(upright[8, 1] - eye_y, 1.0)
    return {
        "width_px": width,
        "roll_degrees": roll,
        "yaw_degrees": yaw,
        "pitch_index": float(pitch_index),
        "eye_distance_px": float(np.linalg.norm(right_eye - left_eye)),
    }


def _crop(image: Image.Image, face, geometry: dict[str, float], config: PrepConfig):
    """Square, head-and-shoulders crop around the face, straightened by the eye line.

    The rotation and the cut are one affine resampling (bicubic) at no less than twice the
    output size, so nothing aliases; one LANCZOS resize then brings it to the training size.
    The square never reaches outside the photo: it shrinks, or slides inwards, instead of
    inventing borders. Returns (crop, its corners in photo pixels, measurements).
    """
    angle = math.radians(geometry["roll_degrees"])
    along = np.array([math.cos(angle), math.sin(angle)])  # the eye line, left to right
    down = np.array([-math.sin(angle), math.cos(angle)])  # perpendicular to it, towards the chin
    left_eye, right_eye = face.landmarks[36:42].mean(axis=0), face.landmarks[42:48].mean(axis=0)
    eyes = (left_eye + right_eye) / 2

    intended = config.crop_scale * geometry["width_px"]
    # The rotated square's axis-aligned extent must lie inside the photo: no invented borders.
    spread = abs(math.cos(angle)) + abs(math.sin(angle))
    side = min(intended, min(image.size) / spread)
    wanted = eyes + (0.5 - config.eye_line_height) * side * down
    half = side * spread / 2
    center = np.clip(wanted, [half, half], [image.width - half, image.height - half])

    origin = center - side / 2 * (along + down)  # top-left corner of the square, in photo pixels
    corners = np.array([origin, origin + side * along, origin + side * (along + down), origin + side * down])

    # Cut out the region first, and when it is far larger than needed, shrink it by a whole
    # factor (a box average, fast and alias-free) while keeping at least twice the output size
    # for the rotation: a 12 MP selfie's crop then rotates 4x faster with nothing lost.
    left, top = np.floor(corners.min(axis=0)).astype(int)
    right, bottom = np.ceil(corners.max(axis=0)).astype(int) + 1
    region = image.crop((max(0, left), max(0, top), min(image.width, right), min(image.height, bottom)))
    factor = max(1, int(side // (2 * config.resolution)))
    if factor > 1:
        region = region.reduce(factor)
    start = (origin - [max(0, left), max(0, top)]) / factor
    size = max(1, int(round(side / factor)))
    straightened = region.transform(
        (size, size),
        Image.Transform.AFFINE,
        (along[0], down[0], start[0], along[1], down[1], start[1]),
        resample=Image.Resampling.BICUBIC,
    )
    crop = straightened.resize((config.resolution, config.resolution), Image.Resampling.LANCZOS)
    info = {
        "side_px": side,
        "intended_side_px": intended,
        "fraction_of_intended": side / intended,
        # how far the photo's edge pushed the square from where the face wanted it, in sides
        "off_centre": float(np.linalg.norm(center - wanted) / side),
        "upscale": config.resolution / side,
        "rotation_degrees": geometry["roll_degrees"],
    }
    return crop, corners, info


def _look(crop: Image.Image, landmarks: np.ndarray, geometry: dict[str, float]) -> dict[str, float]:
    """Measures for variety and captions: expression, light direction, background, colourfulness.

    Taken on the prepared crop, so every photo is measured at the same scale and framing.
    """
    pixels = np.asarray(crop, dtype=np.float64)
    # mouth: inner-lip gap (points 62-66) and width (48-54), relative to the face width
    mouth_width = float(np.linalg.norm(landmarks[54] - landmarks[48]))
    mouth_open = float(np.linalg.norm(landmarks[66] - landmarks[62])) / max(mouth_width, 1.0)
    # light direction: brightness of the left against the right quarter of the face region, in
    # stops (the middle of the crop holds the face; quarters avoid the nose's own shadow)
    n = pixels.shape[0]
    luma = pixels @ np.array([0.2126, 0.7152, 0.0722])
    band = luma[int(0.3 * n) : int(0.6 * n)]
    left = band[:, int(0.30 * n) : int(0.45 * n)].mean()
    right = band[:, int(0.55 * n) : int(0.70 * n)].mean()
    side_light = math.log2((left + 1.0) / (right + 1.0))
    # background: mean colour of the top corners (beside the head, above the shoulders)
    corner = max(4, n // 8)
    background = np.concatenate([pixels[:corner, :corner].reshape(-1, 3), pixels[:corner, -corner:].reshape(-1, 3)])
    # colourfulness: spread between channels; about 0 for black-and-white photos
    chroma = float(np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean())
    return {
        "mouth_open": mouth_open,
        "mouth_width_to_face": mouth_width / max(geometry["width_px"], 1.0),
        "side_light_stops": side_light,
        "background_rgb": background.mean(axis=0).tolist(),
        "background_std": float(background.std()),
        "chroma": chroma,
    }


# --- captions -------------------------------------------------------------------------------------

# Brightness words ("dim", "bright") are left out on purpose: from pixels alone, dim light and
# dark skin look alike, and a caption must not be wrong about the person.


def _caption_words(photo: _Photo, diagnosis) -> list[str]:
    """Words that describe what is incidental in this photo, so the token does not absorb it."""
    words = ["close-up" if "tight_crop" in photo.warnings else "head and shoulders"]
    look, face = photo.measurements["look"], photo.measurements["face"]
    if look["chroma"] < 1.5:
        words.append("black and white")
    elif "color_cast" in photo.warnings:
        direction = diagnosis.measures["color_cast"].detail.get("direction", "")
        if "warm" in direction:
            words.append("warm light")
        elif "cool" in direction:
            words.append("cool light")
    if "harsh_shadows" in photo.warnings:
        words.append("hard overhead light")
    if abs(face["yaw_degrees"]) >= 25:  # a three-quarter view or more
        words.append("looking to the side")
    if look["mouth_open"] > 0.25:
        words.append("open mouth")
    return words


def _caption(photo: _Photo, config: PrepConfig) -> str:
    return ", ".join([f"a photo of {config.token} {config.class_word}", *photo.caption_words])


# --- the set ----------------------------------------------------------------------------------------


def _check_identity(photos: list[_Photo], config: PrepConfig) -> None:
    """Reject faces that are not the person most of the set shows.

    The consensus is found among the photos with no other problem: the medoid (the face with
    the smallest median distance to the others) picks the majority person, the group is every
    face within the threshold of it, and each face is then judged by its median distance to
    that group, with dlib's pairwise threshold, so no single photo (the first, or an odd one)
    decides who the person is.
    """
    from portraitkit.faces import identity_distance

    with_face = [p for p in photos if p.embedding is not None]
    clean = [p for p in with_face if not p.reasons] or with_face
    if len(clean) < 3:  # two faces that differ: no majority says which one is the person
        return
    distances = np.array([[identity_distance(a.embedding, b.embedding) for b in clean] for a in clean])
    medians = [np.median(np.delete(row, i)) for i, row in enumerate(distances)]
    medoid = int(np.argmin(medians))
    group = [clean[i] for i in np.flatnonzero(distances[medoid] <= config.same_person_threshold)]
    for photo in with_face:
        others = [identity_distance(photo.embedding, g.embedding) for g in group if g is not photo]
        if not others:
            continue
        distance = float(np.median(others))
        photo.measurements["identity_distance"] = distance
        if distance > config.same_person_threshold:
            photo.add("different_person")
    for photo in group:
        photo.measurements["identity_consensus"] = True


def _perceptual_hash(image: Image.Image) -> np.ndarray:
    """pHash: signs of the 8x8 lowest DCT frequencies (without DC) of a 32x32 grey thumbnail.

    Low frequencies describe the layout of light and dark, which resizing, recompression and
    small colour edits leave alone, while a different framing or pose changes it.
    """
    from scipy.fft import dctn

    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    low = dctn(grey, norm="ortho")[:8, :8].ravel()[1:]
    return low > np.median(low)


def _hex(bits: np.ndarray) -> str:
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _check_duplicates(photos: list[_Photo], config: PrepConfig) -> None:
    """Group near-identical shots; keep the best of each group, reject the rest as `duplicate`."""
    from portraitkit.faces import identity_distance

    hashed = [p for p in photos if p.phash is not None]
    parent = list(range(len(hashed)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(hashed):
        for j in range(i + 1, len(hashed)):
            b = hashed[j]
            if int(np.count_nonzero(a.phash != b.phash)) > config.max_hash_distance:
                continue
            if a.embedding is not None and b.embedding is not None:
                if identity_distance(a.embedding, b.embedding) > config.max_duplicate_identity_distance:
                    continue
            parent[root(j)] = root(i)

    groups: dict[int, list[_Photo]] = {}
    for i, photo in enumerate(hashed):
        groups.setdefault(root(i), []).append(photo)
    for group in groups.values():
        if len(group) < 2:
            continue
        # Keep the one with nothing else wrong, then the most face pixels, then the sharpest.
        keeper = min(group, key=lambda p: (bool(p.reasons), -_face_width(p), _blur(p), p.source))
        for photo in group:
            if photo is keeper:
                continue
            photo.add("duplicate")
            photo.duplicate_of = keeper.source
            photo.measurements["duplicate_of"] = keeper.source
            photo.measurements["hash_distance"] = int(np.count_nonzero(photo.phash != keeper.phash))


def _face_width(photo: _Photo) -> float:
    return photo.measurements.get("face", {}).get("width_px", 0.0)


def _blur(photo: _Photo) -> float:
    score = photo.measurements.get("quality", {}).get("measures", {}).get("blur", {}).get("score")
    return 1.0 if score is None else score


def _publish(photos: list[_Photo], out_dir: Path, staging: Path, config: PrepConfig) -> None:
    """Move accepted crops into the dataset under names from their sources; clear out stale ones."""
    taken = {"contact_sheet.png"}
    for photo in photos:
        if photo.status != "accepted" or photo.staged is None:
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(photo.source).with_suffix("").as_posix().replace("/", "_")).strip("._")
        name, n = f"{stem or 'photo'}.png", 2
        while name.lower() in taken:
            name, n = f"{stem}-{n}.png", n + 1
        taken.add(name.lower())
        photo.staged.replace(out_dir / name)
        photo.output = name
    # Images a previous run accepted but this one does not: listed in its metadata, so ours.
    old = out_dir / "metadata.jsonl"
    if old.is_file():
        for row in files.read_jsonl(old):
            name = str(row.get("file_name", ""))
            if name and "/" not in name and name.lower() not in taken:
                (out_dir / name).unlink(missing_ok=True)


# --- summary and variety ---------------------------------------------------------------------------


def _summary(photos: list[_Photo], ignored: list[str], config: PrepConfig) -> dict[str, Any]:
    accepted = sum(p.status == "accepted" for p in photos)
    by_reason = {code: sum(code in p.reasons for p in photos) for code in REJECTIONS}
    by_warning = {code: sum(code in p.warnings for p in photos if p.status == "accepted") for code in WARNINGS}
    enough = accepted >= config.min_accepted
    if enough:
        message = f"{accepted} of {len(photos)} photos are usable, enough to train (at least {config.min_accepted})."
        if accepted < config.recommended:
            message = message[:-1] + f"; {config.recommended}-20 give a more faithful likeness."
    else:
        common = max(by_reason, key=by_reason.get) if any(by_reason.values()) else None
        hint = f" (most common problem: {REJECTIONS[common]})" if common else ""
        message = (
            f"Only {accepted} of {len(photos)} photos {'is' if accepted == 1 else 'are'} usable{hint} and at least {config.min_accepted} are needed: "
            f"add {config.min_accepted - accepted} or more sharp, well-lit photos of the same person, "
            "alone in the picture and with the face filling a good part of it."
        )
    return {
        "inputs": len(photos),
        "accepted": accepted,
        "rejected": len(photos) - accepted,
        "min_accepted": config.min_accepted,
        "min_accepted_reason": "DreamBooth personalises from 3-5 photos; with fewer a LoRA memorises the shots instead of learning the face.",
        "enough_to_train": enough,
        "message": message,
        "rejected_by_reason": {k: v for k, v in by_reason.items() if v},
        "accepted_with_warnings": {k: v for k, v in by_warning.items() if v},
        "ignored_files": ignored,
        "reason_words": {**REJECTIONS, **WARNINGS},
    }


# How much spread counts as "varied", with the reason for each number.
_VARIETY = {
    # head turn: frontal plus three-quarter views (~30 degrees) teach the face's 3-D shape
    "head_pose": ("yaw_degrees", 30.0, "Add photos with the head turned about 30-45 degrees to each side, and a few looking a little up or down."),
    # light direction: one stop between the brighter side in one photo and in another is a
    # clearly different light (window on the left vs on the right)
    "lighting": ("side_light_stops", 1.0, "Add photos in different light: by a window, outdoors in the shade, indoors in the evening, lit from either side."),
    # expression: inner-lip gap over mouth width changes by ~0.15 between a closed mouth and a
    # smile with teeth
    "expression": ("mouth_open", 0.15, "Add photos with different expressions: a smile with teeth, a closed-mouth smile, a neutral face."),
}
# background: mean colour distance (8-bit RGB) between photos' backgrounds; 40 is a clearly
# different colour of wall or scenery, less is the same room
_BACKGROUND_SPREAD = 40.0
_BACKGROUND_ADVICE = "Add photos in different places: with one background the model learns it as part of the person."


def _variety(accepted: list[_Photo], config: PrepConfig) -> dict[str, Any]:
    """How varied the accepted set is, per aspect, and what would improve it."""
    result: dict[str, Any] = {"advice": []}
    if len(accepted) < config.recommended:
        result["advice"].append(
            f"Add {config.recommended - len(accepted)} or more photos: {config.recommended}-20 accepted photos give the most faithful likeness."
        )
    if len(accepted) < 2:
        result["note"] = "Variety needs at least two accepted photos."
        return result
    looks = [{**p.measurements["face"], **p.measurements["look"]} for p in accepted]
    for aspect, (key, needed, advice) in _VARIETY.items():
        values = np.array([look[key] for look in looks])
        spread = float(values.max() - values.min())
        varied = spread >= needed
        result[aspect] = {"measure": key, "min": float(values.min()), "max": float(values.max()), "spread": spread, "needed": needed, "varied": varied}
        if not varied:
            result["advice"].append(advice)
    colours = np.array([look["background_rgb"] for look in looks])
    pairwise = [float(np.linalg.norm(a - b)) for i, a in enumerate(colours) for b in colours[i + 1 :]]
    spread = float(np.mean(pairwise))
    result["background"] = {"measure": "mean RGB distance between backgrounds", "spread": spread, "needed": _BACKGROUND_SPREAD, "varied": spread >= _BACKGROUND_SPREAD}
    if spread < _BACKGROUND_SPREAD:
        result["advice"].append(_BACKGROUND_ADVICE)
    return result


# --- report -------------------------------------------------------------------------------------------


def _entry(photo: _Photo, config: PrepConfig) -> dict[str, Any]:
    entry = {
        "source": photo.source,
        "status": photo.status,
        "reasons": [code for code in REJECTIONS if code in photo.reasons],
        "warnings": [code for code in WARNINGS if code in photo.warnings],
        "output": photo.output,
        "caption": _caption(photo, config) if photo.output else None,
        "measurements": photo.measurements,
    }
    if photo.message:
        entry["message"] = photo.message
    return entry


def _jsonable(value: Any) -> Any:
    """numpy scalars to Python, NaN/inf to null, floats rounded: report.json stays valid, readable JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return round(float(value), 4) if math.isfinite(value) else None
    if isinstance(value, Path):
        return value.as_posix()
    return value


# --- contact sheet ------------------------------------------------------------------------------------

_CELL = 220  # thumbnail size in the contact sheet
_GREEN, _AMBER, _RED, _GREY = (46, 160, 67), (214, 150, 0), (207, 34, 46), (110, 110, 110)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1
    except (TypeError, OSError):
        return ImageFont.load_default()


def _contact_sheet(photos: list[_Photo], summary: dict[str, Any]) -> Image.Image:
    """Every input as a thumbnail with a coloured frame and its decision in words.

    Green: accepted; amber: accepted with warnings; red: rejected. The outline on the photo is
    the square that was (or would have been) cropped, or the face box when there is no crop.
    """
    columns = min(5, max(1, len(photos)))
    rows = math.ceil(len(photos) / columns)
    pad, text_height = 10, 78
    width = columns * (_CELL + pad) + pad
    title_lines = textwrap.wrap(summary["message"], max(30, width // 10))
    header = 16 + 24 * len(title_lines)
    sheet = Image.new("RGB", (width, header + rows * (_CELL + text_height + pad) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    title, small = _font(18), _font(13)
    for n, line in enumerate(title_lines):
        draw.text((pad, 8 + 24 * n), line, fill=(20, 20, 20), font=title)
    for index, photo in enumerate(photos):
        x = pad + (index % columns) * (_CELL + pad)
        y = header + (index // columns) * (_CELL + text_height + pad)
        colour = _RED if photo.reasons else (_AMBER if photo.warnings else _GREEN)
        draw.rectangle((x - 3, y - 3, x + _CELL + 2, y + _CELL + 2), outline=colour, width=4)
        if photo.thumbnail is not None:
            ox, oy = x + (_CELL - photo.thumbnail.width) // 2, y + (_CELL - photo.thumbnail.height) // 2
            sheet.paste(photo.thumbnail, (ox, oy))
            if photo.crop_corners is not None:
                points = [(ox + px * photo.thumb_scale, oy + py * photo.thumb_scale) for px, py in photo.crop_corners]
                draw.polygon(points, outline=colour, width=2)
            elif photo.face_box is not None:
                l, t, r, b = (v * photo.thumb_scale for v in photo.face_box)
                draw.rectangle((ox + l, oy + t, ox + r, oy + b), outline=colour, width=2)
        else:
            draw.rectangle((x, y, x + _CELL - 1, y + _CELL - 1), fill=(225, 225, 225))
            draw.text((x + 12, y + _CELL // 2 - 8), "cannot be read", fill=_GREY, font=small)
        lines = [(_shorten(photo.source, 32), (30, 30, 30))]
        if photo.reasons:
            words = [REJECTIONS[c] + (f" of {photo.duplicate_of}" if c == "duplicate" else "") for c in REJECTIONS if c in photo.reasons]
            lines += [(line, colour) for line in textwrap.wrap("rejected: " + ", ".join(words), 34)]
        else:
            lines.append(("accepted", colour))
        if photo.warnings:
            warned = "warnings: " + ", ".join(WARNINGS[c] for c in WARNINGS if c in photo.warnings)
            lines += [(line, (30, 30, 30)) for line in textwrap.wrap(warned, 34)]
        for n, (line, fill) in enumerate(lines[:5]):
            draw.text((x, y + _CELL + 6 + 14 * n), line, fill=fill, font=small)
    return sheet


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else "..." + text[-(length - 3) :]
