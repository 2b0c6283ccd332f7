"""Backgrounds told apart, in the face's own frame.

Each photo is resampled into the face's frame: centred on the landmarks' centroid, scaled by their
spread (the RMS distance of the 68 points from it, steadier than the eye distance), turned by the
eye line. There `Shot.backdrop_distance` is the mean colour difference of the background beside
and above the person (`BACKDROP_EXTENT` spreads wide, face-and-hair mask removed), cell by cell,
so nine crops of one photo in front of one flag are one background, not nine. (Whether two
photos are one photograph is `faces.photograph`'s question.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The backdrop's region: about three face widths, head and shoulders and what is around them.
BACKDROP_EXTENT = 9.0
BACKDROP_CELLS = 12


@dataclass
class Shot:
    """The background around the face, in its own frame: cell colours."""

    backdrop: np.ndarray  # (BACKDROP_CELLS, BACKDROP_CELLS, 3) mean RGB of background pixels, NaN where none

    def backdrop_distance(self, other: Shot) -> float | None:
        """Mean RGB distance (0-441) between the backgrounds where both have one; None: no overlap."""
        both = ~np.isnan(self.backdrop[..., 0]) & ~np.isnan(other.backdrop[..., 0])
        mirrored = ~np.isnan(self.backdrop[..., 0]) & ~np.isnan(other.backdrop[:, ::-1, 0])
        distances = [float(np.linalg.norm(self.backdrop[m] - theirs[m], axis=1).mean())
                     for m, theirs in ((both, other.backdrop), (mirrored, other.backdrop[:, ::-1])) if m.sum() >= 4]
        return min(distances) if distances else None


def shot(image: Image.Image, landmarks: np.ndarray) -> Shot:
    """The background around `image`'s face (68 landmarks, photo pixels), in the face's frame."""
    from portraitkit.prep.masks import face_mask

    n = BACKDROP_CELLS * 8
    colour, valid, points = _region(image.convert("RGB"), landmarks, BACKDROP_EXTENT, n)
    background = valid & (np.asarray(face_mask(points, n)) == 0)
    cells = np.full((BACKDROP_CELLS, BACKDROP_CELLS, 3), np.nan)
    for row in range(BACKDROP_CELLS):
        for column in range(BACKDROP_CELLS):
            block = np.s_[row * 8 : row * 8 + 8, column * 8 : column * 8 + 8]
            if background[block].mean() >= 0.5:
                cells[row, column] = colour[block][background[block]].mean(axis=0)
    return Shot(backdrop=cells)


def _region(image: Image.Image, landmarks: np.ndarray, extent: float, size: int):
    """`image` resampled into the face's frame: (pixels, inside-the-photo mask, landmarks there)."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    centre = landmarks.mean(axis=0)
    spread = float(np.sqrt(((landmarks - centre) ** 2).sum(axis=1).mean()))
    eye_line = landmarks[42:48].mean(axis=0) - landmarks[36:42].mean(axis=0)
    along = eye_line / max(float(np.linalg.norm(eye_line)), 1e-6)
    down = np.array([-along[1], along[0]])
    step = extent * spread / size
    origin = centre - size / 2 * step * (along + down)
    # PIL maps each output pixel (x, y) to the input point origin + x*step*along + y*step*down.
    matrix = (step * along[0], step * down[0], origin[0], step * along[1], step * down[1], origin[1])
    pixels = image.transform((size, size), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
    inside = Image.new("L", image.size, 255).transform((size, size), Image.Transform.AFFINE, matrix,
                                                        resample=Image.Resampling.NEAREST, fillcolor=0)
    points = np.stack([(landmarks - origin) @ along, (landmarks - origin) @ down], axis=1) / step
    return np.asarray(pixels, dtype=np.float64), np.asarray(inside) > 0, points
