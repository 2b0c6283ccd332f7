"""Is this the same photograph? One answer for prep's duplicates and pick's copies.

An edit of a shot (a crop down to a few pixels' shift, a resize, a re-encode, a colour or
brightness edit, a slight rotation, a mirror image) is the same picture moved and scaled as a
whole: its corners and edges, in the background as on the face, sit where a single similarity
transform puts them. A new shot of the same person is not: the head moved against the
background, the expression and the light changed, and the face alone correlates with the
person's other photos as well as with an edit (0.68-0.84 for different shots of one person, the
measure this module replaces). So, as photo de-duplication tools do, two photos are compared by
geometric verification of local features:

1. ORB keypoints and binary descriptors (scikit-image) on each photo in grey at `SIDE` pixels,
   and on its mirror image;
2. descriptors matched both ways (cross-checked, Lowe's ratio test), then RANSAC fits one
   similarity transform (shift, scale, rotation) to the matches; `inliers` are the matches it
   explains within `RESIDUAL` pixels;
3. the second photo is resampled through that transform onto the first, and the grey pictures
   are correlated where both have pixels (`correlation`): an edit of one shot lines up over the
   whole overlap, an accidental fit of a few keypoints does not.

`same_photograph` answers yes when both hold: at least `MIN_INLIERS` inliers and a
`MIN_CORRELATION` correlation. The thresholds' calibration, on real photos of several people,
is in docs/judge.md and printed by `python benchmarks/bench_judge.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from portraitkit.faces.photos import PixelMemo, pixels_key

# Each photo is compared at this long side: edits of one shot down to a 4 px re-crop keep their
# corners there, and the ORB pyramid (8 scales, 1.2 apart) still meets a crop at a third of the
# frame. About 0.1 s of CPU per view.
SIDE = 384
KEYPOINTS = 400
RESIDUAL = 2.0  # pixels at SIDE: a re-encode or resize moves a corner by a pixel or less
# Calibrated on 29 real people's 284 photos (docs/judge.md; `python benchmarks/bench_judge.py`):
# of 1,836 pairs of distinct shots of one person, the 124 that line up on 6 or more points
# correlate at most 0.855 once aligned (two studio portraits on one white wall 0.83), while 754 of
# 756 edits made of 84 of the photos (crops from 4 px, mirror, JPEG 50, half size, colour, 3
# degrees, greyscale, re-rendered) line up and correlate 0.96 or more (the two missed:
# half-size copies under MIN_ENLARGED), as do 28 of the set's 32 real re-crops and resizes.
MIN_INLIERS = 6
MIN_CORRELATION = 0.9
MIN_ENLARGED = 72  # px on the short side: a smaller picture (a toy render, 64 px) is compared at its own size
# Below this share of common pixels the correlation says too little to count.
MIN_OVERLAP = 0.15


@dataclass
class Fingerprint:
    """A photo as the comparison needs it: grey at `SIDE`, and its keypoints as taken and, the first
    time a comparison asks, of its mirror image (prep's re-saved copies and the training photos a
    portrait is compared with never need that view: half the work)."""

    grey: np.ndarray  # (height, width) float 0-1, SIDE on the long side (a tiny picture: its own size)
    views: dict = field(default_factory=dict)  # mirrored (bool) -> (keypoints (n, 2) row, column; descriptors (n, 256) bool)

    def view(self, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
        if mirrored not in self.views:
            self.views[mirrored] = _features(self.grey[:, ::-1] if mirrored else self.grey)
        return self.views[mirrored]


@dataclass
class Match:
    """How two photos line up: the evidence for (or against) their being one photograph."""

    inliers: int  # matched keypoints one similarity transform explains
    correlation: float  # grey correlation of the two, lined up by that transform, where both have pixels
    mirrored: bool  # the second is a mirror image of the first
    scale: float  # the second's pixels per pixel of the first, at SIDE
    rotation: float  # degrees the second is turned against the first
    overlap: float  # the share of the first photo that the second covers
    covered: float  # the share of the second photo that lies on the first

    @property
    def same(self) -> bool:
        return self.inliers >= MIN_INLIERS and self.correlation >= MIN_CORRELATION

    @property
    def whole_frame(self) -> bool:
        """The same picture over the whole frame, unmirrored and unturned: a re-saved or resized copy."""
        return (self.same and not self.mirrored and abs(self.scale - 1) <= 0.02 and abs(self.rotation) <= 0.5
                and min(self.overlap, self.covered) >= 0.97)


# Fingerprints by the pixels they came from (about 1.2 MB each): prep run again in a notebook, and
# the training crops validation and pick compare every render with, are fingerprinted once.
_FINGERPRINTS = PixelMemo(64)


def fingerprint(image) -> Fingerprint:
    """`image` (PIL) in grey at `SIDE` on its long side (one under MIN_ENLARGED px: its own size),
    with its ORB features as taken (those of its mirror image follow when a comparison asks).
    The same pixels again give the same Fingerprint back (read it, never change it)."""
    return _FINGERPRINTS.get(pixels_key(image), lambda: _fingerprint(image))


def _fingerprint(image) -> Fingerprint:
    from PIL import Image

    grey = image.convert("L")
    # A smaller photo is enlarged to SIDE, where the pyramid finds enough corners on it (a 128 px
    # training crop has too few of its own to tell its copy from another edit); a picture under
    # MIN_ENLARGED px (a toy base's 64 px of noise) is not: it holds too little to verify, and its
    # noise enlarged is all corners, ten times the work (0.6 s a view, against 13 ms as it is).
    scale = SIDE / max(grey.size) if min(grey.size) >= MIN_ENLARGED else min(1.0, SIDE / max(grey.size))
    size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
    pixels = np.asarray(grey.resize(size, Image.Resampling.BOX), dtype=np.float64) / 255.0
    found = Fingerprint(grey=pixels)
    found.view(False)  # the view every comparison needs, made now; the mirror image's when one asks
    return found


def compare(a: Fingerprint, b: Fingerprint, mirrored: bool = True) -> Match | None:
    """The best way `b` lines up with `a`, as taken or (with `mirrored`) mirrored; None when no
    transform fits at all. The mirror image is not tried when `b` as taken already is the same."""
    best = None
    for flip in (False, True) if mirrored else (False,):
        if best is not None and best.same:
            break
        found = _line_up(a, b, flip)
        if found is not None and (best is None or (found.same, found.inliers) > (best.same, best.inliers)):
            best = found
    return best


def same_photograph(a: Fingerprint, b: Fingerprint, mirrored: bool = True) -> Match | None:
    """The match when `b` is the same photograph as `a` (an edit, crop or, with `mirrored`, a mirror
    image of it), else None."""
    found = compare(a, b, mirrored)
    return found if found is not None and found.same else None


def _features(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from skimage.feature import ORB

    # fast_threshold 0.05 finds corners in a soft or low-contrast photo too; too few keypoints
    # (a tiny or featureless image) means nothing can be verified, never a match.
    # 8 scales 1.2 apart at SIDE; a smaller picture gets those of them that stay 48 px or more
    scales = max(1, min(8, 1 + int(math.log(max(min(pixels.shape), 48) / 48) / math.log(1.2))))
    orb = ORB(n_keypoints=KEYPOINTS, fast_threshold=0.05, downscale=1.2, n_scales=scales)
    try:
        orb.detect_and_extract(pixels)
    except (RuntimeError, ValueError, IndexError):  # too small, or no corner at all
        return np.zeros((0, 2)), np.zeros((0, 256), dtype=bool)
    return orb.keypoints, orb.descriptors


def _line_up(a: Fingerprint, b: Fingerprint, mirrored: bool) -> Match | None:
    import warnings

    from skimage.feature import match_descriptors
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform

    (keys_a, descriptors_a), (keys_b, descriptors_b) = a.view(False), b.view(mirrored)
    if len(keys_a) < 3 or len(keys_b) < 3:
        return None
    pairs = match_descriptors(descriptors_a, descriptors_b, cross_check=True, max_ratio=0.85)
    if len(pairs) < max(3, MIN_INLIERS):  # too few matches to be one photograph: not worth a fit
        return None
    # (x, y) points: a's keypoint -> b's (in b's mirrored frame when mirrored)
    source, target = keys_a[pairs[:, 0]][:, ::-1], keys_b[pairs[:, 1]][:, ::-1]
    with warnings.catch_warnings():  # "no inliers found" is an answer here, not a problem
        warnings.simplefilter("ignore")
        # A fixed seed: the same two photos get the same answer on every machine and every run.
        # Two matches fix a similarity; 200 draws find a 30% inlier share with 99.9% certainty.
        model, inliers = ransac((source, target), SimilarityTransform, min_samples=2, residual_threshold=RESIDUAL,
                                max_trials=200, stop_probability=0.999, rng=0)
    if model is None or inliers is None or inliers.sum() < 3:
        return None
    other = b.grey[:, ::-1] if mirrored else b.grey
    # Lining the pictures up costs more than the rest: only where enough points agree to matter.
    correlation, overlap = _aligned_correlation(a.grey, other, model) if inliers.sum() >= MIN_INLIERS else (float("nan"), 0.0)
    covered = min(1.0, overlap * a.grey.size * float(model.scale) ** 2 / b.grey.size)  # the same region, in b's pixels
    return Match(inliers=int(inliers.sum()), correlation=round(correlation, 4), mirrored=mirrored,
                 scale=round(float(model.scale), 4), rotation=round(float(np.degrees(model.rotation)), 2),
                 overlap=round(overlap, 4), covered=round(covered, 4))


def _aligned_correlation(a: np.ndarray, b: np.ndarray, model) -> tuple[float, float]:
    """Pearson correlation of `a` and `b` resampled onto it by `model` (a's x, y -> b's), where both
    have pixels, lightly smoothed so that re-encoding and resampling noise do not count; and the
    share of `a` that `b` covers."""
    from scipy.ndimage import binary_erosion, gaussian_filter
    from skimage.transform import warp

    moved = warp(b, model, output_shape=a.shape, order=1, cval=np.nan)
    overlap = float((~np.isnan(moved)).mean())
    both = binary_erosion(~np.isnan(moved), iterations=3)  # away from the edge the smoothing blurs in
    if overlap < MIN_OVERLAP:
        return -1.0, overlap
    smooth_a = gaussian_filter(a, 1.0)
    smooth_b = gaussian_filter(np.nan_to_num(moved, nan=0.0), 1.0)
    x, y = smooth_a[both] - smooth_a[both].mean(), smooth_b[both] - smooth_b[both].mean()
    norm = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return (float((x * y).sum()) / norm if norm > 0 else -1.0), overlap
