"""How far the camera was from the face, measured in each photo, and the selfie effect undone.

A pinhole camera makes a width W at distance d span F * W / d on its frame. The frame is known
from EXIF: the 35 mm-equivalent focal length F (`FocalLengthIn35mmFilm`, or the real
`FocalLength` times the crop factor that `FocalPlaneXResolution` gives) means the picture's
diagonal stands for 43.27 mm, the diagonal of a 36 x 24 mm frame. W is the distance between
the pupils, the facial width least changed by perspective (both eyes sit at about one depth)
and found reliably by dlib's 68 landmarks: adult mean about 63 mm, "the vast majority of adults
in the range 50-75 mm" (Dodgson 2004, Proc. SPIE 5291, doi:10.1117/12.529999). So one person's
distance is known to about +-6% (a standard deviation of about 3.8 mm, as that range implies),
plus what a head turned away shortens. Without EXIF the frame is unknown and so is the distance:
`None`, said as such.

A LoRA learns whatever the photos share as the person's face: trained on 30 cm selfies, it
learns the nose about 17% wider against the face than a person across the room sees it, and no
prompt undoes that. `correct` re-renders such a photo as if taken from `config.correct_to_cm`
(the head model's perspective warp, `lens_warp.warp_to_distance`) before it is cropped.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # what "35 mm equivalent" refers to
IPD_CM = 6.3  # Dodgson 2004: mean adult interpupillary distance
IPD_RELATIVE_SD = 0.06  # about 3.8 mm: 50-75 mm holds the vast majority (about +-3 SD)
SELFIE_CM = 50.0  # nearer than this is an arm's-length selfie (arms reach about 60-70 cm)
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # iBUG 68 (0-based)
_EXIF_IFD = 0x8769
_FOCAL_35MM, _FOCAL, _PLANE_X_RES, _PLANE_UNIT, _EXIF_WIDTH, _EXIF_HEIGHT = 0xA405, 0x920A, 0xA20E, 0xA210, 0xA002, 0xA003
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0}  # FocalPlaneResolutionUnit: inch, cm, mm


def focal_35mm(path: str | Path) -> tuple[float | None, str | None]:
    """The 35 mm-equivalent focal length from a photo's EXIF, and which tags gave it; (None, None) without."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            exif = image.getexif().get_ifd(_EXIF_IFD)
            size = image.size
    except Exception:  # an unreadable file is prep's to report, not this measure's
        return None, None
    equivalent = _number(exif.get(_FOCAL_35MM))
    if equivalent:
        return equivalent, "FocalLengthIn35mmFilm"
    focal, resolution = _number(exif.get(_FOCAL)), _number(exif.get(_PLANE_X_RES))
    unit = _UNIT_MM.get(int(exif.get(_PLANE_UNIT, 2) or 2))
    if focal and resolution and unit:
        # the focal plane's pixels per unit give the sensor's size, hence the crop factor
        width = _number(exif.get(_EXIF_WIDTH)) or max(size)
        height = _number(exif.get(_EXIF_HEIGHT)) or min(size)
        sensor_diagonal = math.hypot(width, height) / resolution * unit
        return focal * FRAME_DIAGONAL_MM / sensor_diagonal, "FocalLength x crop (FocalPlaneXResolution)"
    return None, None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def pupils(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two eye centres (mean of each eye's six landmarks), in image pixels."""
    pts = np.asarray(landmarks, dtype=np.float64)
    return pts[LEFT_EYE].mean(axis=0), pts[RIGHT_EYE].mean(axis=0)


def camera_distance_cm(landmarks: np.ndarray, image_size: tuple[int, int], focal_mm: float | None) -> float | None:
    """Camera to nose tip, in cm, from the pupils' separation in the frame; None without a focal length.

    The pinhole gives the distance to the eyes; the nose tip is the head model's eye-to-tip depth
    nearer (about 2 cm), since the distances the course uses are measured to the nose tip.
    """
    from portraitkit.teach.lens import Head

    if not focal_mm:
        return None
    left, right = pupils(landmarks)
    separation_px = float(np.linalg.norm(right - left))
    if separation_px <= 0:
        return None
    separation_mm = separation_px * FRAME_DIAGONAL_MM / math.hypot(*image_size)
    to_eyes_cm = focal_mm * IPD_CM / separation_mm
    head = Head()
    eye_to_tip = head.points["pronasale"][2] - (head.points["exocanthion_left"][2] + head.points["endocanthion_left"][2]) / 2
    return max(to_eyes_cm - float(eye_to_tip), 1.0)


def nose_wider_pct(distance_cm: float, reference_cm: float) -> float:
    """How much wider, against the face, the head model says the nose looks at `distance_cm`."""
    from portraitkit.teach.lens import distortion

    return distortion(distance_cm, reference_cm).nose_to_face_width


def measure(photo, path: Path, image, face, config) -> None:
    """Record `camera_distance_cm` (None when the photo has no focal length) and how it was found."""
    focal, source = focal_35mm(path)
    distance = camera_distance_cm(face.landmarks, image.size, focal)
    photo.measurements["camera_distance_cm"] = None if distance is None else round(distance, 1)
    photo.measurements["camera_distance"] = (
        {"uncertainty_cm": round(distance * IPD_RELATIVE_SD, 1), "focal_35mm": round(focal, 1), "focal_from": source,
         "nose_wider_pct": round(nose_wider_pct(distance, config.correct_to_cm), 1), "against_cm": config.correct_to_cm,
         "how": "pupil separation in the frame against the adult mean of 63 mm (Dodgson 2004)"}
        if distance is not None else {"unknown": "no focal length in the photo's EXIF, so the frame's scale is unknown"}
    )
    if distance is not None and distance < SELFIE_CM:
        photo.warnings.append("close_camera")


def correct(photo, image, face, config):
    """The photo re-rendered from `config.correct_to_cm` when it was taken nearer than
    `config.correct_below_cm`, with its face found again; else the photo and face unchanged."""
    from portraitkit.faces.detect import detect_faces
    from portraitkit.teach.lens_warp import warp_to_distance

    distance = photo.measurements.get("camera_distance_cm")
    if not config.correct_distance or distance is None or distance >= config.correct_below_cm:
        return image, face
    warped, _ = warp_to_distance(image, config.correct_to_cm, from_cm=distance, face=face)
    found = detect_faces(warped)
    if not found:  # the warp moves features a few pixels; losing the face would be a bug to see
        photo.measurements["corrected_from_cm"] = None
        photo.message = "the distance correction lost the face; the photo was used as taken"
        return image, face
    photo.measurements["corrected_from_cm"] = distance
    photo.measurements["corrected_to_cm"] = config.correct_to_cm
    if photo.thumbnail is not None:  # the contact sheet shows the re-rendered photo, the original inset
        photo.thumbnail_before = photo.thumbnail
        photo.thumbnail = warped.resize(photo.thumbnail.size, _lanczos())
    return warped, found[0]


def _lanczos():
    from PIL import Image

    return Image.Resampling.LANCZOS


def set_advice(accepted: list, config) -> tuple[dict[str, Any], list[str]]:
    """The set's camera distances and, when most known ones are arm's-length selfies, what to do."""
    known = [p.measurements["camera_distance_cm"] for p in accepted if p.measurements.get("camera_distance_cm") is not None]
    summary: dict[str, Any] = {"known": len(known), "unknown": len(accepted) - len(known)}
    advice: list[str] = []
    if not known:
        summary["note"] = "No photo has a focal length in its EXIF (messaging apps strip it): distances unknown."
        return summary, advice
    close = [d for d in known if d < SELFIE_CM]
    median = float(np.median(known))
    summary.update(median_cm=round(median, 1), min_cm=round(min(known), 1), max_cm=round(max(known), 1), selfies=len(close))
    corrected = sum(p.measurements.get("corrected_from_cm") is not None for p in accepted)
    if 2 * len(close) > len(known) and corrected < len(close):
        wider = nose_wider_pct(float(np.median(close)), config.correct_to_cm)
        advice.append(
            f"{len(close)} of {len(known)} photos with a known distance were taken from under {SELFIE_CM:.0f} cm (median "
            f"{np.median(close):.0f} cm): in them your nose looks about {wider:.0f}% wider against your face than from "
            f"{config.correct_to_cm:.0f} cm, and a LoRA learns that as your face. Add a few shots from 1-2 m (a timer, or a "
            "friend, zoomed in), or run prep with --correct-distance."
        )
    return summary, advice
