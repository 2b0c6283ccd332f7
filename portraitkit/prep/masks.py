"""The person's face-and-hair mask of each prepared crop, for `train --masked-loss`.

A masked loss counts the person and not the background, so the LoRA learns the face instead of
the kitchen behind it. prep already knows where the face is (dlib's 68 landmarks), so the mask
comes from them, with no segmentation model:

- the **face**: the convex hull of the 68 landmarks (jaw line, brows, eyes, nose, mouth);
- the **forehead and hair**: the jaw line's 17 points mirrored upwards across the brow line,
  scaled by `HAIR_REACH`, so the hull closes in an oval over the forehead and the crown (the
  chin's mirror image is the top of the head);
- **dilated** by `DILATION` of the face width: the ears, hair beside the temples, and a margin
  the landmarks' own error does not eat into.

What it does not cover: the neck, shoulders, clothes and background, and long hair below the
jaw. White (255) is the person, black (0) the rest; `masks/<file>.png` beside the crop, same size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MASKS_DIR = "masks"  # in a dataset folder; metadata.jsonl names each crop's mask in `mask_file_name`
# Top of the head above the brows, in brow-to-chin heights: the skull's top is about 0.7-0.8 of
# that above the brows (the brow line sits a little above the middle of a head's height); 0.9
# leaves room for hair volume.
HAIR_REACH = 0.9
DILATION = 0.12  # of the face width (jaw end to jaw end): ears and a margin for landmark error


def landmarks_in_crop(landmarks: np.ndarray, corners: np.ndarray, resolution: int) -> np.ndarray:
    """The 68 landmarks (photo pixels) in the crop's pixels: `corners` are the crop square's
    corners in the photo (top-left, top-right, bottom-right, bottom-left), as `crop_face` returns."""
    origin = corners[0]
    along, down = corners[1] - origin, corners[3] - origin  # each as long as the square's side
    side2 = float(along @ along)
    relative = np.asarray(landmarks, dtype=np.float64) - origin
    return np.stack([relative @ along, relative @ down], axis=1) / side2 * resolution


def face_mask(points: np.ndarray, size: int) -> Image.Image:
    """The face-and-hair mask ("L", `size` square) from the 68 landmarks in crop pixels."""
    from PIL import ImageDraw
    from scipy.ndimage import distance_transform_edt
    from scipy.spatial import ConvexHull

    points = np.asarray(points, dtype=np.float64)
    jaw = points[0:17]
    brows = points[17:27].mean(axis=0)
    up = brows - points[8]
    up /= max(float(np.linalg.norm(up)), 1e-6)  # chin to brows: "up" in the face's frame, tilted heads too
    below = (brows - jaw) @ up  # how far each jaw point lies below the brow line
    hair = jaw + ((1 + HAIR_REACH) * below)[:, None] * up  # as far above it, times HAIR_REACH
    hull_points = np.concatenate([points, hair])
    hull = hull_points[ConvexHull(hull_points).vertices]

    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in hull], fill=255)
    face_width = float(np.linalg.norm(points[16] - points[0]))
    radius = DILATION * face_width
    outside = distance_transform_edt(np.asarray(mask) == 0)
    return Image.fromarray(((outside <= radius) * 255).astype(np.uint8), mode="L")


def crop_mask(landmarks: np.ndarray, corners: np.ndarray, resolution: int) -> Image.Image:
    """The mask of the crop `crop_face` cut at `corners`, from the face's landmarks in photo pixels."""
    return face_mask(landmarks_in_crop(landmarks, corners, resolution), resolution)


def mask_on_photo(thumbnail: Image.Image, mask: Image.Image, corners: np.ndarray, scale: float,
                  colour: tuple[int, int, int] = (40, 110, 255)) -> Image.Image:
    """`thumbnail` (the photo at `scale`) with the crop's mask laid over it as a tint: where the
    masked loss looks, shown on the contact sheet."""
    origin = np.asarray(corners[0], dtype=np.float64)
    along, down = corners[1] - origin, corners[3] - origin
    side2 = float(along @ along)
    n = mask.width
    # PIL's affine transform maps each output (thumbnail) pixel to its input (mask) pixel:
    # thumbnail -> photo (divide by scale) -> crop square (project on its sides) -> mask pixels.
    a, b = along * n / side2 / scale, down * n / side2 / scale
    c0, c1 = -(origin @ along) * n / side2, -(origin @ down) * n / side2
    placed = mask.transform(thumbnail.size, Image.Transform.AFFINE, (a[0], a[1], c0, b[0], b[1], c1),
                            resample=Image.Resampling.BILINEAR, fillcolor=0)
    tint = Image.new("RGB", thumbnail.size, colour)
    return Image.composite(Image.blend(thumbnail.convert("RGB"), tint, 0.4), thumbnail.convert("RGB"), placed)


def coverage(mask: Image.Image) -> float:
    """The fraction of the crop the mask covers (report.json records it per photo)."""
    return float((np.asarray(mask) > 127).mean())
