"""One photograph counted once, and backgrounds told apart: both judged in the face's own frame.

A crop, a resize, a re-encode, a colour edit or a mirror image of one shot changes the whole
frame (its perceptual hash differs) but not what is around the face. So each photo is resampled
into the face's frame: centred on the landmarks' centroid, scaled by their spread (the RMS
distance of the 68 points from it, steadier than the eye distance), turned by the eye line.
There two shots are compared:

- `Shot.likeness`: the correlation of the grey face-and-surroundings (`EXTENT` spreads wide,
  64 px), the better of as-is and mirrored, allowing a pixel of slack for landmark jitter. Only
  pixels both photos have count, so a crop that cut the surroundings is still recognised.
  Correlation ignores brightness and contrast, grey ignores colour.
- `Shot.backdrop_distance`: the mean colour difference of the background beside and above the
  person (`BACKDROP_EXTENT` spreads wide, face-and-hair mask removed), cell by cell, so nine
  crops of one photo in front of one flag are one background, not nine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# The compared region's side, in spreads of the 68 landmarks (about 0.3 face widths each): at 4
# it holds the face, hair, ears and collar. Wider regions separated edits of one shot less well
# from other people's portraits on the samples (below).
EXTENT = 4.0
SIZE = 64
# The backdrop's region: about three face widths, head and shoulders and what is around them.
BACKDROP_EXTENT = 9.0
BACKDROP_CELLS = 12


@dataclass
class Shot:
    """The face's surroundings in its own frame: grey for `likeness`, cell colours for backdrops."""

    grey: np.ndarray  # (SIZE, SIZE) float; valid where `inside`
    inside: np.ndarray  # (SIZE, SIZE) bool: the region lies inside the photo there
    backdrop: np.ndarray  # (BACKDROP_CELLS, BACKDROP_CELLS, 3) mean RGB of background pixels, NaN where none

    def likeness(self, other: Shot) -> float:
        """Correlation (-1..1) of the two regions, mirrored or not: 0.60-0.97 (median 0.86) for
        the data/samples edits of one photograph, 0.38-0.51 for two people's portraits."""
        return max(_correlation(self.grey, self.inside, other.grey, other.inside),
                   _correlation(self.grey, self.inside, other.grey[:, ::-1], other.inside[:, ::-1]))

    def backdrop_distance(self, other: Shot) -> float | None:
        """Mean RGB distance (0-441) between the backgrounds where both have one; None: no overlap."""
        both = ~np.isnan(self.backdrop[..., 0]) & ~np.isnan(other.backdrop[..., 0])
        mirrored = ~np.isnan(self.backdrop[..., 0]) & ~np.isnan(other.backdrop[:, ::-1, 0])
        distances = [float(np.linalg.norm(self.backdrop[m] - theirs[m], axis=1).mean())
                     for m, theirs in ((both, other.backdrop), (mirrored, other.backdrop[:, ::-1])) if m.sum() >= 4]
        return min(distances) if distances else None


def shot(image: Image.Image, landmarks: np.ndarray) -> Shot:
    """`image`'s face (68 landmarks, photo pixels) and its surroundings, in the face's frame."""
    from portraitkit.prep.masks import face_mask

    grey, inside, _ = _region(image.convert("L"), landmarks, EXTENT, SIZE)
    n = BACKDROP_CELLS * 8
    colour, valid, points = _region(image.convert("RGB"), landmarks, BACKDROP_EXTENT, n)
    background = valid & (np.asarray(face_mask(points, n)) == 0)
    cells = np.full((BACKDROP_CELLS, BACKDROP_CELLS, 3), np.nan)
    for row in range(BACKDROP_CELLS):
        for column in range(BACKDROP_CELLS):
            block = np.s_[row * 8 : row * 8 + 8, column * 8 : column * 8 + 8]
            if background[block].mean() >= 0.5:
                cells[row, column] = colour[block][background[block]].mean(axis=0)
    return Shot(grey=grey, inside=inside, backdrop=cells)


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


def _correlation(a: np.ndarray, a_inside: np.ndarray, b: np.ndarray, b_inside: np.ndarray, slack: int = 1) -> float:
    """The best Pearson correlation over shifts of up to `slack` pixels, on pixels both have."""
    best = -1.0
    for dy in range(-slack, slack + 1):
        for dx in range(-slack, slack + 1):
            shifted, shifted_inside = np.roll(b, (dy, dx), (0, 1)), np.roll(b_inside, (dy, dx), (0, 1))
            both = a_inside & shifted_inside
            both[:slack], both[-slack:], both[:, :slack], both[:, -slack:] = False, False, False, False  # rolled-in edges
            if both.mean() < 0.3:  # too little in common to say
                continue
            x, y = a[both] - a[both].mean(), shifted[both] - shifted[both].mean()
            norm = float(np.sqrt((x * x).sum() * (y * y).sum()))
            if norm > 0:
                best = max(best, float((x * y).sum()) / norm)
    return best
