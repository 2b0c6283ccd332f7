"""Where the face is and how it is framed: its geometry, the square crop, its look, the caption.

`face_geometry` reads size and pose from the 68 landmarks, `crop_face` cuts the training square
by them, `measure_look` measures the crop (for variety and captions), and `caption_words` and
`caption` put what was measured into words, so that the token does not absorb it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from portraitkit.prep.config import PrepConfig
from portraitkit.prep.photo import Photo

# How the training squares are saved: PNG's fastest compression. At 512 px it encodes in a quarter
# of the default's time (19 against 76 ms for a sample crop) for a file 7% larger; still lossless.
CROP_PNG = {"compress_level": 1}


def face_geometry(landmarks: np.ndarray) -> dict[str, float]:
    """Size and pose of a face from its 68 landmarks (iBUG order), in photo pixels and degrees."""
    from portraitkit.faces.pose import roll_degrees, upright, yaw_degrees

    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    points = upright(landmarks)  # the face's own upright frame: a tilted head does not read as a turned one
    # Pitch index: where the nose tip sits between the eye line and the chin (about 0.4 when
    # level; larger looking down, smaller looking up). An index, not degrees.
    eye_y = (points[36:48, 1]).mean()
    pitch_index = (points[30, 1] - eye_y) / max(points[8, 1] - eye_y, 1.0)
    return {
        "width_px": float(np.linalg.norm(landmarks[16] - landmarks[0])),
        "roll_degrees": roll_degrees(landmarks),
        "yaw_degrees": yaw_degrees(landmarks),
        "pitch_index": float(pitch_index),
        "eye_distance_px": float(np.linalg.norm(right_eye - left_eye)),
    }


def crop_face(image: Image.Image, face, geometry: dict[str, float], config: PrepConfig):
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


def size_conditioning(photo, config: PrepConfig) -> dict[str, list[int]]:
    """SDXL's size and crop conditioning for one prepared image, in the convention for a picture
    shown whole (`models.conditioning`): `original_size` the crop's own size in the photo's pixels
    (a small crop, upscaled to the training size, is said to be small), `crop_top_left` (0, 0).
    The crop's corner in the photo scaled to the training size would take values in the
    thousands, far outside what SDXL saw in pretraining, while sampling asks for (0, 0)."""
    side = round(photo.measurements["crop"]["side_px"])
    return {"original_size": [side, side], "crop_top_left": [0, 0]}


def measure_look(crop: Image.Image, landmarks: np.ndarray, geometry: dict[str, float]) -> dict[str, float]:
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


def caption_words(photo: Photo, diagnosis) -> list[str]:
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


def caption(config: PrepConfig, words: Sequence[str] = ()) -> str:
    """The caption: "a photo of <token> <class word>", then the measured `words` (`caption_words`)."""
    return ", ".join([f"a photo of {config.token} {config.class_word}", *words])
