"""Catching a "portrait" that is a training photo regurgitated: same framing, same pose, same background.

An identity scorer ranks such images highest, since nothing is more like the training set than
the training set; an over-fitted LoRA would then win its own ranking. Likeness alone cannot tell
them apart (two real photos of one person are far less alike than a copy and its original), so
the whole picture is compared with every training crop, on two measures:

- **structural similarity** (SSIM, Wang et al. 2004) of the two images in grey at 64 x 64 pixels:
  at that size a copy stays a copy through re-encoding, resizing, sharpening or a colour shift,
  while a new scene, a new background or a new framing of the same face falls far below;
- **face layout**: the mean distance between the two faces' 68 landmarks, in image sides, which
  is small only when the face sits at the same place, at the same size, in the same pose.

A portrait is a copy when both agree: SSIM at least `COPY_SSIM` and layout at most `COPY_LAYOUT`.
Calibration (`python benchmarks/calibrate_copies.py`: the 9 crops prep accepts from data/samples,
each against all of them):
- copies (JPEG quality 70, resized to 768 px, warmer and brighter, sharpened; 36 cases): SSIM
  0.99-1.00, layout 0.003-0.033;
- the same face and hair (prep's mask) pasted at 0.6-0.8 of its size elsewhere into three other
  scenes (54 cases): SSIM 0.07-0.20, layout 0.10-0.27, identity distance 0.14-0.56 (recognised);
- another person (the astronaut, 3 framings): SSIM 0.10-0.12;
- the sample set's other crops, all from one photograph in other framings and light (9 cases,
  each against the rest): SSIM 0.13-0.77, layout 0.017-0.113. prep puts every face at the same
  place and size in its crop, so layout alone cannot tell these apart; SSIM does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COPY_SSIM = 0.85  # copies measured 0.99 or more; reframings of the same photograph 0.77 at most, new scenes 0.20
COPY_LAYOUT = 0.05  # image sides: copies moved the landmarks 0.033 at most (dlib's jitter), a moved face 0.10 or more
SIDE = 64  # the comparison's resolution: detail below it is what re-encoding changes


def thumbnail(image) -> np.ndarray:
    """The image in grey, `SIDE` pixels square (the whole picture, squashed if not square), 0-1."""
    from PIL import Image

    grey = image.convert("L").resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.float64) / 255.0


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two grey images in 0-1 (Gaussian window, sigma 1.5, as Wang et al.).

    scikit-image's implementation; it leaves out the 5-pixel border a full window does not fit.
    """
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False))


def layout(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The 68 landmarks in image sides (x / width, y / height): where the face is, how big, its pose."""
    return np.asarray(landmarks, dtype=np.float64) / np.asarray(size, dtype=np.float64)


@dataclass
class Copy:
    """The training photo a portrait reproduces, and the two measures that say so."""

    photo: str
    ssim: float
    layout: float

    def reason(self) -> str:
        return (f"copies_training_photo: reproduces the training photo {self.photo} "
                f"(structural similarity {self.ssim:.2f}, face {self.layout:.3f} image sides from its place)")


class CopyDetector:
    """Compares images with the training crops they might copy."""

    def __init__(self, names: list[str], images: list):
        from portraitkit.faces.detect import detect_faces

        self.names = list(names)
        self.thumbnails = [thumbnail(image) for image in images]
        self.layouts = []
        for image in images:
            found = detect_faces(image.convert("RGB"))
            self.layouts.append(layout(found[0].landmarks, image.size) if found else None)

    def closest(self, image, face=None) -> Copy | None:
        """The training crop most like `image` (by SSIM), with its face layout distance (None: no face)."""
        if not self.names:
            return None
        small = thumbnail(image)
        scores = [ssim(small, reference) for reference in self.thumbnails]
        best = int(np.argmax(scores))
        distance = float("inf")
        if face is not None and self.layouts[best] is not None:
            distance = float(np.linalg.norm(layout(face.landmarks, image.size) - self.layouts[best], axis=1).mean())
        return Copy(self.names[best], round(scores[best], 4), round(distance, 4) if np.isfinite(distance) else distance)

    def copies(self, image, face=None) -> Copy | None:
        """The training photo `image` copies, or None: both measures must agree (see the module)."""
        found = self.closest(image, face)
        return found if found is not None and found.ssim >= COPY_SSIM and found.layout <= COPY_LAYOUT else None
