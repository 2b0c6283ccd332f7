"""Intake: the photos to read, each one examined into the staging folder, the accepted published.

`find_inputs` lists the photo files (and the files it ignores), `examine_safely` opens, detects,
measures and crops one photo into the hidden staging folder, recording any failure on it, and
`publish` moves the crops the set-wide checks accepted into the dataset under readable names.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from portraitkit.core import files
from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.photos import PHOTO_SUFFIXES
from portraitkit.prep import distance, proportions
from portraitkit.prep.checks import judge_quality
from portraitkit.prep.config import PrepConfig
from portraitkit.prep.crops import CROP_PNG, caption_words, crop_face, face_geometry, measure_look
from portraitkit.prep.masks import MASKS_DIR, coverage, crop_mask
from portraitkit.prep.photo import THUMBNAIL, Photo
from portraitkit.prep.shots import shot
from portraitkit.core.settings import check_resolution

STAGING = ".prep-staging"  # hidden, so imagefolder never reads half-finished work

# --- finding the inputs -----------------------------------------------------------------------


def check_config(config: PrepConfig) -> None:
    check_resolution(config.resolution)
    if not 0 < config.correct_below_cm <= config.correct_to_cm < float("inf"):
        raise PortraitkitError(
            f"Distance correction needs 0 < correct_below_cm ({config.correct_below_cm}) <= correct_to_cm ({config.correct_to_cm}) cm: "
            "photos nearer than the first are re-rendered from the second."
        )
    for name in ("token", "class_word"):
        value = getattr(config, name)
        if not value.strip() or "\n" in value:
            raise PortraitkitError(f"The {name.replace('_', ' ')} {value!r} is empty or has a line break: use a short word.")


def printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 (a name from an old camera or a Windows zip)
    become U+FFFD instead of breaking report.json."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def check_out_dir(out_dir: Path) -> None:
    """The dataset folder is new, empty, or one prep wrote before (it then replaces its images)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PortraitkitError(f"{out_dir} is a file: give a folder for the dataset with --out.")
    if out_dir.is_dir() and not (out_dir / "report.json").is_file() and any(
            not entry.name.startswith(".") for entry in out_dir.iterdir()):
        raise PortraitkitError(f"{out_dir} already holds files that prep did not write: choose a new or empty --out folder.")


def find_inputs(photos_dir: Path, out_dir: Path) -> tuple[list[Path], list[str]]:
    """Photo files under `photos_dir` (sorted; hidden ones and datasets prep wrote skipped) and the rest.

    A dataset prep wrote (its report.json and metadata.jsonl mark the folder) is never read as
    photos, whatever --out this run has: its crops are the photos again, and would be counted twice.
    """
    if not photos_dir.is_dir():
        raise PortraitkitError(f"{photos_dir} is not a folder: give the folder that holds your photos.")
    if out_dir.resolve() == photos_dir.resolve():
        raise PortraitkitError("The dataset folder must differ from the photos folder: choose another --out.")
    datasets = {marker.parent for marker in photos_dir.rglob("report.json") if (marker.parent / "metadata.jsonl").is_file()}
    if photos_dir.resolve() in out_dir.resolve().parents:
        datasets.add(out_dir)  # this run's own, before it is marked
    datasets = {folder.resolve() for folder in datasets}
    inputs, ignored = [], []
    for path in sorted(photos_dir.rglob("*")):
        relative = path.relative_to(photos_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue  # .DS_Store, ._IMG (macOS), .ipynb_checkpoints, our own staging folder
        if path.resolve() in datasets and path.resolve() != out_dir.resolve():
            ignored.append(printable(relative.as_posix()) + "/ (a dataset prep wrote)")
            continue
        if not path.is_file() or datasets.intersection(path.resolve().parents):
            continue
        if files.inside(photos_dir, relative.as_posix()) is None:  # a link that leads out of the folder: never read
            ignored.append(printable(relative.as_posix()) + " (a link to a file outside the photos folder: not read)")
            continue
        if path.suffix.lower() in PHOTO_SUFFIXES:
            inputs.append(path)
        else:
            ignored.append(printable(relative.as_posix()))
    if not inputs:
        raise PortraitkitError(
            f"No photos found in {photos_dir}: add 10-20 JPEG, PNG, WEBP or HEIC photos of the person."
        )
    return inputs, ignored


# --- one photo ----------------------------------------------------------------------------------


def examine_safely(path: Path, source: str, staged: Path, config: PrepConfig) -> Photo:
    """`_examine`, with any failure recorded on the photo instead of ending the run."""
    photo = Photo(source=source)
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


def _examine(photo: Photo, path: Path, staged: Path, config: PrepConfig) -> None:
    """Open, detect, measure and crop one photo, recording what was found on `photo`.

    The crop is written to `staged` only when nothing so far rules the photo out; the set-wide
    checks (identity, duplicates) may still reject it.
    """
    from portraitkit.teach.diagnose import diagnose_image
    from portraitkit.faces.detect import detect_faces, face_embedding
    from portraitkit.faces.photograph import fingerprint
    from portraitkit.faces.photos import open_photo

    try:
        image = open_photo(path, max_pixels=config.max_pixels)
    except PortraitkitError as error:  # the file itself: truncated, empty, not an image, too large
        photo.add("unreadable")
        photo.message = str(error)
        return
    photo.measurements.update(width=image.width, height=image.height)
    photo.thumbnail = image.copy()
    photo.thumbnail.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    photo.thumb_scale = photo.thumbnail.width / image.width
    # As taken, before any correction: edits of one shot are compared as they were made.
    photo.fingerprint = fingerprint(image)

    found = detect_faces(image)
    photo.measurements["faces_found"] = len(found)
    if not found:
        photo.add("no_face")
        return
    face = found[0]
    if not face.landmarks_fit:  # found, but the 68 points missed it: crop, identity, pose would be guesses
        photo.add("turned_away")
    else:  # the background, for variety: before any correction too
        photo.shot = shot(image, face.landmarks)
    distance.measure(photo, path, image, face, config)
    proportions.measure(photo, face)  # as taken, before any correction re-renders the photo
    image, face = distance.correct(photo, image, face, config)  # before the crop: the warp needs the whole face
    photo.face_box = face.box
    rivals = [
        other for other in found[1:]
        if other.score >= config.other_face_min_score and other.width * config.dominant_face_ratio > face.width
    ]
    if rivals:
        photo.add("multiple_faces")
    geometry = face_geometry(face.landmarks)
    photo.measurements["face"] = {"box": list(face.box), "score": face.score, "detector": face.detector,
                                  "landmark_misfit": face.misfit, **geometry}

    diagnosis = diagnose_image(image, face, config.face_limits)
    photo.measurements["quality"] = diagnosis.to_dict()
    judge_quality(photo, diagnosis, config)

    crop, corners, crop_info = crop_face(image, face, geometry, config)
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

    if not rivals and face.landmarks_fit:  # with two similar faces we do not know whose identity this is
        photo.embedding = face_embedding(image, face)
    photo.measurements["look"] = measure_look(crop, face.landmarks, geometry)
    photo.caption_words = caption_words(photo, diagnosis)
    if not photo.reasons:  # only photos that may be accepted are worth writing
        files.save_image(staged, crop, **CROP_PNG)
        photo.staged = staged
        photo.mask = crop_mask(face.landmarks, corners, config.resolution)
        photo.measurements["mask"] = {"coverage": coverage(photo.mask)}
        photo.staged_mask = files.save_image(staged.with_name(staged.stem + "_mask.png"), photo.mask)


# --- into the dataset ---------------------------------------------------------------------------


def publish(photos: list[Photo], out_dir: Path, staging: Path, config: PrepConfig) -> None:
    """Move accepted crops into the dataset under names from their sources; clear out stale ones."""
    taken = {"contact_sheet.png"}
    for photo in photos:
        if photo.status != "accepted" or photo.staged is None:
            continue
        stem = output_stem(photo.source)
        name, n = f"{stem or 'photo'}.png", 2
        while name.lower() in taken:
            name, n = f"{stem}-{n}.png", n + 1
        taken.add(name.lower())
        photo.staged.replace(out_dir / name)
        photo.output = name
        (out_dir / MASKS_DIR).mkdir(exist_ok=True)
        photo.staged_mask.replace(out_dir / MASKS_DIR / name)
    # Images a previous run accepted but this one does not: listed in its metadata, so ours.
    old = out_dir / "metadata.jsonl"
    if old.is_file():
        for row in files.read_jsonl(old):
            name = str(row.get("file_name", ""))
            if name and "/" not in name and name.lower() not in taken:
                (out_dir / name).unlink(missing_ok=True)
                (out_dir / MASKS_DIR / name).unlink(missing_ok=True)


def output_stem(source: str) -> str:
    """The name a photo's prepared image is given, without `.png`: its path in the photos folder
    with folders joined by `_` and anything but letters, digits, `.`, `_` and `-` as `_`."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).with_suffix("").as_posix().replace("/", "_")).strip("._")
