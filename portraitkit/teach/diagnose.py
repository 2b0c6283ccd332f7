"""Measures of what makes a casual photo unflattering: light, colour and phone processing.

`diagnose_image(image, face=None)` returns a `Diagnosis`: seven measures, each a `Measure` whose
`score` grows with the problem (None where it cannot be measured), plus `flags`, the problems
worth telling a learner about, in plain words. The preparation stage uses the same function for
its warnings and its blur/exposure decisions, so there is one implementation of each measure.
`measure_image(image, name, face=None)` takes one of them alone, on the same region.

What is measured where (a face's region is its box grown by `FACE_MARGIN` on every side):
- exposure, shadow_harshness, blur: on the face when one is given, because a dark or soft
  background is a choice, a dark or soft face is a problem.
- noise, oversharpening, jpeg_blockiness: on the face region too, at the photo's own pixel
  scale, because these artefacts live at single pixels (and JPEG's 8x8 grid) that resizing
  would hide. Without a face, a central crop of at most `NATIVE_CROP` pixels a side.
- color_cast: always on the whole photo. Skin is not grey, so the face alone cannot tell skin
  colour from a cast; the whole scene averages towards grey in neutral light (the grey-world
  assumption, Buchsbaum 1980), and its departure from grey is the cast.

How each score is built is in the docstrings of the measure functions; where a score becomes a
flag, with the reason for each level, is `portraitkit.faces.quality.FaceLimits` (the one place
quality limits live: what diagnose flags here and what prep rejects).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from scipy import ndimage

from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.quality import FaceLimits
from portraitkit.teach.colour import LUMINANCE, linear_to_srgb, luma, srgb_to_linear, to_array

if TYPE_CHECKING:
    from portraitkit.faces.detect import Face

MEASURES = (
    "exposure",
    "color_cast",
    "shadow_harshness",
    "oversharpening",
    "jpeg_blockiness",
    "noise",
    "blur",
)

FACE_MARGIN = 0.15  # grow the detector's tight box (brows to chin) to take in forehead and cheeks
NATIVE_CROP = 1024  # pixel-scale measures without a face: central crop, keeps a 12 MP photo fast
BLUR_SCALE = 512  # blur is judged at about the size the face will be trained at (downscale only)


@dataclass
class Measure:
    """One measure: `score` grows with the problem (None: not measurable here); `detail` explains it."""

    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Diagnosis:
    measures: dict[str, Measure]
    flags: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: {"measures": {name: {"score", "detail"}}, "flags": [...]}."""
        return asdict(self)


# --- regions ----------------------------------------------------------------------------------


def face_region(size: tuple[int, int], face: Face, margin: float = FACE_MARGIN) -> tuple[int, int, int, int]:
    """The face's box grown by `margin` of its size on each side, clipped to the image."""
    width, height = size
    left, top, right, bottom = face.box
    dx, dy = margin * (right - left), margin * (bottom - top)
    box = (
        max(0, int(left - dx)),
        max(0, int(top - dy)),
        min(width, int(np.ceil(right + dx))),
        min(height, int(np.ceil(bottom + dy))),
    )
    if box[2] - box[0] < 16 or box[3] - box[1] < 16:
        return (0, 0, width, height)  # a face box (almost) outside the frame: use the whole photo
    return box


def _central_crop(size: tuple[int, int], side: int = NATIVE_CROP) -> tuple[int, int, int, int]:
    width, height = size
    w, h = min(width, side), min(height, side)
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def _gray(image: Image.Image) -> np.ndarray:
    """Luma in 8-bit levels (0-255) as float, the unit the pixel-scale measures report in."""
    return luma(to_array(image)).astype(np.float64) * 255.0


# --- the measures -----------------------------------------------------------------------------


def measure_exposure(rgb: np.ndarray) -> Measure:
    """Clipped shadows and highlights: the fraction of pixels with no detail left at either end.

    Score: dark + bright clipped fraction (0-1). Luma at or below 5/255 counts as crushed
    black, at or above 250/255 as blown white; JPEG noise keeps true clipping from sitting at
    exactly 0 or 255. `mean_luma` lets a caller tell under- from over-exposure.
    """
    y = luma(rgb)
    dark = float(np.mean(y <= 5 / 255))
    bright = float(np.mean(y >= 250 / 255))
    return Measure(
        score=dark + bright,
        detail={"dark_clipped_frac": dark, "bright_clipped_frac": bright, "mean_luma": float(y.mean())},
    )


def _cast_direction(a: float, b: float) -> str:
    """Name the hue of a cast the way a learner would describe the tint."""
    hue = np.degrees(np.arctan2(b, a)) % 360
    names = [  # CIELAB hue angles: 0 magenta-red, 90 yellow, 180 green, 270 blue
        (20, "magenta"), (105, "warm (orange-yellow)"), (150, "yellow-green"), (200, "green"),
        (240, "cyan"), (310, "cool (blue)"), (340, "purple"), (360, "magenta"),
    ]
    return next(name for limit, name in names if hue < limit)


def measure_color_cast(rgb: np.ndarray) -> Measure:
    """Strength of a colour cast: how far the light's colour, estimated from the photo, is from grey.

    The light is estimated with grey-edge (van de Weijer, Gevers and Gijsenij 2007, "Edge-based
    color constancy"): colour *differences* across edges average to the colour of the light,
    which holds far better than "the scene averages to grey" in portraits full of skin and
    clothes. Linear-light gradients after a 2-pixel Gaussian, pooled with a Minkowski 6-norm
    (their best settings). The estimate is converted to CIELAB at mid-grey brightness, and its
    chroma sqrt(a*^2 + b*^2) is the score: CIELAB units are roughly equal steps of perceived
    colour difference. Very dark and clipped pixels are left out (noise and sensor limits).
    """
    from skimage.color import rgb2lab

    linear = srgb_to_linear(rgb.astype(np.float64))
    y = luma(rgb)
    usable = (y > 0.04) & (y < 0.96)
    if usable.sum() < 100:
        usable = np.ones_like(usable)
    gradients = []
    for channel in range(3):
        smooth = ndimage.gaussian_filter(linear[..., channel], 2.0)
        gradients.append(np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))[usable])
    p = 6
    light = np.array([np.mean(g**p) ** (1 / p) for g in gradients])
    # mid-grey brightness, so the cast, not the exposure or contrast, sets the chroma
    light = light / max(float(light @ LUMINANCE), 1e-12) * 0.18
    lab = rgb2lab(linear_to_srgb(light)[None, :])[0]  # D65, as sRGB
    a, b = float(lab[1]), float(lab[2])
    return Measure(
        score=float(np.hypot(a, b)),
        detail={"a": a, "b": b, "hue_deg": float(np.degrees(np.arctan2(b, a)) % 360), "direction": _cast_direction(a, b)},
    )


def _patch_luminance(linear_y: np.ndarray, center: np.ndarray, radius_x: float, radius_y: float) -> float:
    """Median linear luminance inside an ellipse (median: robust to a stray eyelash or pore)."""
    radius_x, radius_y = max(radius_x, 1.0), max(radius_y, 1.0)
    h, w = linear_y.shape
    top, bottom = max(0, int(center[1] - radius_y)), min(h, int(center[1] + radius_y) + 1)
    left, right = max(0, int(center[0] - radius_x)), min(w, int(center[0] + radius_x) + 1)
    yy, xx = np.ogrid[top:bottom, left:right]
    inside = ((xx - center[0]) / radius_x) ** 2 + ((yy - center[1]) / radius_y) ** 2 <= 1
    values = linear_y[top:bottom, left:right][inside]
    return float(np.median(values)) if values.size else float("nan")


def measure_shadow_harshness(rgb: np.ndarray, landmarks: np.ndarray | None) -> Measure:
    """Under-eye and under-nose shadows against the lit cheek, in stops (log2 of the luminance ratio).

    Patches come from the 68 iBUG landmarks (0-based): under each eye, a band just below the
    lower lid (points 40-41 and 46-47); under the nose, the philtrum between the nose base (33)
    and the top of the upper lip (51); the cheeks midway between the nose wings (31, 35) and
    the jaw (2, 14). The brighter cheek is the lit reference, so a face lit from one side is
    compared with its lit half. Score: the harsher of the two shadows, in stops, at least 0.
    Overhead light (a ceiling lamp, midday sun) makes both large; soft frontal light keeps them
    under about one stop.
    """
    if landmarks is None:
        return Measure(score=None, detail={"reason": "no face"})
    pts = np.asarray(landmarks, dtype=np.float64)
    linear_y = srgb_to_linear(rgb.astype(np.float64)) @ LUMINANCE
    eye_width = np.mean([np.linalg.norm(pts[39] - pts[36]), np.linalg.norm(pts[45] - pts[42])])
    nose_width = np.linalg.norm(pts[35] - pts[31])

    def under_eye(lower_lid: np.ndarray) -> float:
        center = lower_lid.mean(axis=0) + np.array([0.0, 0.35 * eye_width])
        return _patch_luminance(linear_y, center, 0.35 * eye_width, 0.15 * eye_width)

    eyes = [under_eye(pts[[40, 41]]), under_eye(pts[[46, 47]])]
    philtrum = (pts[33] + pts[51]) / 2
    nose = _patch_luminance(linear_y, philtrum, 0.3 * nose_width, 0.25 * np.linalg.norm(pts[51] - pts[33]))
    cheeks = [
        _patch_luminance(linear_y, (pts[31] + pts[2]) / 2, 0.2 * nose_width, 0.2 * nose_width),
        _patch_luminance(linear_y, (pts[35] + pts[14]) / 2, 0.2 * nose_width, 0.2 * nose_width),
    ]
    if not np.all(np.isfinite(eyes + [nose] + cheeks)):
        return Measure(score=None, detail={"reason": "face too close to the edge of the photo"})
    cheek = max(cheeks)
    floor = 1e-4  # keeps log2 finite on crushed blacks
    eye_stops = float(np.log2((cheek + floor) / (np.mean(eyes) + floor)))
    nose_stops = float(np.log2((cheek + floor) / (nose + floor)))
    return Measure(
        score=max(0.0, eye_stops, nose_stops),
        detail={"under_eye_stops": eye_stops, "under_nose_stops": nose_stops, "lit_cheek_luminance": cheek},
    )


def _edge_profiles(gray: np.ndarray, reach: int = 8, max_edges: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Luma profiles across the strongest step edges, dark side first.

    Returns (profiles (N, 2*reach+1), offsets). Edge pixels are local maxima of the gradient
    magnitude along the gradient direction (thin edges, not their shoulders) in the top 5% of
    magnitude; the profile is sampled along the gradient with bilinear interpolation.
    """
    smooth = ndimage.gaussian_filter(gray, 1.0)  # direction only; the profile uses the raw image
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(gx, gy)
    h, w = gray.shape
    margin = reach + 1
    inner = np.zeros_like(magnitude, dtype=bool)
    inner[margin : h - margin, margin : w - margin] = True
    if not inner.any():
        return np.empty((0, 2 * reach + 1)), np.arange(-reach, reach + 1)
    strong = inner & (magnitude >= np.percentile(magnitude[inner], 95)) & (magnitude > 0)
    ys, xs = np.nonzero(strong)
    nx, ny = gx[ys, xs] / magnitude[ys, xs], gy[ys, xs] / magnitude[ys, xs]
    ahead = ndimage.map_coordinates(magnitude, [ys + ny, xs + nx], order=1)
    behind = ndimage.map_coordinates(magnitude, [ys - ny, xs - nx], order=1)
    peak = (magnitude[ys, xs] >= ahead) & (magnitude[ys, xs] >= behind)
    ys, xs, nx, ny = ys[peak], xs[peak], nx[peak], ny[peak]
    if ys.size > max_edges:  # evenly spaced subset: deterministic and fast
        keep = np.linspace(0, ys.size - 1, max_edges).astype(int)
        ys, xs, nx, ny = ys[keep], xs[keep], nx[keep], ny[keep]
    offsets = np.arange(-reach, reach + 1)
    rows = ys[:, None] + ny[:, None] * offsets[None, :]
    cols = xs[:, None] + nx[:, None] * offsets[None, :]
    profiles = ndimage.map_coordinates(gray, [rows.ravel(), cols.ravel()], order=1).reshape(rows.shape)
    return profiles, offsets


def measure_oversharpening(gray: np.ndarray) -> Measure:
    """Halo overshoot: how far edges ring past their two sides, as a fraction of edge contrast.

    Sharpening (an unsharp mask) adds a bright rim on the light side of every edge and a dark
    rim on the dark side. Each strong edge's profile is scaled so its dark plateau (median 6-8 px
    out) is 0 and its light plateau is 1; only edges of at least 20 levels' contrast count.
    The median over edges of these profiles is the photo's typical edge: texture beside single
    edges averages out, a halo that every edge shares does not. Score: how far that typical
    edge rises above 1 within 5 px on the light side plus how far it dips below 0 on the dark side.
    """
    profiles, offsets = _edge_profiles(gray)
    if profiles.shape[0] == 0:
        return Measure(score=0.0, detail={"edges": 0})
    far_dark = np.median(profiles[:, offsets <= -6], axis=1)
    far_light = np.median(profiles[:, offsets >= 6], axis=1)
    contrast = far_light - far_dark
    usable = contrast >= 20
    if usable.sum() < 20:
        return Measure(score=0.0, detail={"edges": int(usable.sum())})
    typical = np.median((profiles[usable] - far_dark[usable, None]) / contrast[usable, None], axis=0)
    near = (np.abs(offsets) >= 1) & (np.abs(offsets) <= 5)
    overshoot = max(0.0, float(typical[near & (offsets > 0)].max() - 1))
    undershoot = max(0.0, float(-typical[near & (offsets < 0)].min()))
    return Measure(
        score=overshoot + undershoot,
        detail={"edges": int(usable.sum()), "overshoot": overshoot, "undershoot": undershoot,
                "typical_edge": [round(float(v), 3) for v in typical]},
    )


def measure_jpeg_blockiness(gray: np.ndarray) -> Measure:
    """JPEG's 8x8 block grid: how much larger pixel steps are on one column (row) in 8 than on the rest.

    Mean absolute horizontal differences are averaged down each column; the eight columns of
    each phase (column index mod 8) are averaged, and the strongest phase is compared with the
    mean of the other seven. Searching the phase finds the grid even after a crop. Same for
    rows; score: the mean of the two ratios minus 1 (about 0 with no grid).
    """

    def ratio(diffs: np.ndarray) -> tuple[float, int]:
        column_means = diffs.mean(axis=0)
        usable = column_means.size // 8 * 8
        if usable < 16:
            return 1.0, 0
        phases = column_means[:usable].reshape(-1, 8).mean(axis=0)
        best = int(np.argmax(phases))
        others = np.delete(phases, best).mean()
        return float(phases[best] / max(others, 1e-6)), best

    horizontal, phase_x = ratio(np.abs(np.diff(gray, axis=1)))
    vertical, phase_y = ratio(np.abs(np.diff(gray, axis=0)).T)
    return Measure(
        score=max(0.0, (horizontal + vertical) / 2 - 1),
        detail={"horizontal_ratio": horizontal, "vertical_ratio": vertical, "grid_phase": [phase_x, phase_y]},
    )


def measure_noise(gray: np.ndarray) -> Measure:
    """Noise standard deviation in 8-bit levels on the flatter half of the picture.

    Immerkaer's estimator (1996, "Fast noise variance estimation"): the 3x3 mask below cancels
    any locally linear image, leaving noise; sigma = sqrt(pi/2) / 6 * mean |response|. Edges and
    texture also respond, so only pixels whose (pre-smoothed) gradient is in the lower half are
    used, which keeps skin and walls and drops eyelashes and hair.
    """
    if min(gray.shape) < 5:
        return Measure(score=0.0, detail={"sigma_levels": 0.0, "flat_fraction": 0.0})
    mask = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = np.abs(ndimage.convolve(gray, mask, mode="reflect"))[1:-1, 1:-1]
    smooth = ndimage.gaussian_filter(gray, 2.0)
    gradient = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))[1:-1, 1:-1]
    flat = gradient <= np.percentile(gradient, 50)
    sigma = float(np.sqrt(np.pi / 2) / 6 * response[flat].mean()) if flat.any() else 0.0
    return Measure(score=sigma, detail={"sigma_levels": sigma, "flat_fraction": float(flat.mean())})


def measure_blur(gray: np.ndarray) -> Measure:
    """The blur effect of Crete-Roffet et al. (2007, "The blur effect: perception and estimation
    with a new no-reference perceptual blur metric"), scikit-image's `blur_effect`: 0 sharp,
    towards 1 blurred.

    Idea: blurring a sharp picture removes a lot of its pixel-to-pixel variation; blurring a
    blurred one removes little. The picture is re-blurred with an 11-pixel box along each axis,
    and the score is the share of edge strength (Sobel) that survives the re-blur, taking the
    blurrier of the two directions.
    """
    from skimage.measure import blur_effect

    vertical, horizontal = (float(score) for score in blur_effect(gray / 255.0, h_size=11, reduce_func=None))
    return Measure(score=max(vertical, horizontal), detail={"vertical": vertical, "horizontal": horizontal})


# --- putting it together ----------------------------------------------------------------------


def _flags(measures: dict[str, Measure], on_face: bool, t: FaceLimits) -> list[str]:
    where = "the face" if on_face else "the photo"
    flags = []
    exposure = measures["exposure"].detail
    if exposure["bright_clipped_frac"] > t.flag_bright_clipped:
        flags.append(f"Parts of {where} are blown out to pure white ({exposure['bright_clipped_frac']:.0%}): skin detail there is lost.")
    if exposure["dark_clipped_frac"] > t.flag_dark_clipped:
        flags.append(f"Parts of {where} are crushed to black ({exposure['dark_clipped_frac']:.0%}).")
    if exposure["mean_luma"] < t.flag_dark_luma:
        flags.append(f"{where.capitalize()} is too dark (underexposed): find more light or face a window.")
    elif exposure["mean_luma"] > t.flag_bright_luma:
        flags.append(f"{where.capitalize()} is too bright (overexposed).")
    cast = measures["color_cast"]
    if cast.score > t.flag_color_cast:
        flags.append(f"The colours have a {cast.detail['direction']} tint (strength {cast.score:.0f}), typical of indoor or mixed light.")
    shadows = measures["shadow_harshness"]
    if shadows.score is not None and shadows.score > t.flag_shadow_stops:
        part = "under the eyes" if shadows.detail["under_eye_stops"] >= shadows.detail["under_nose_stops"] else "under the nose"
        flags.append(f"Harsh shadows {part} ({shadows.score:.1f} stops darker than the cheek), typical of overhead light.")
    if measures["oversharpening"].score > t.flag_oversharpening:
        flags.append("Edges have bright and dark halos: the photo was over-sharpened (phone or app processing).")
    if measures["jpeg_blockiness"].score > t.flag_jpeg_blockiness:
        flags.append("Visible JPEG blocks: the photo was compressed hard (a messaging or social app copy?). Use the original.")
    if measures["noise"].score > t.flag_noise:
        flags.append(f"The photo is grainy (noise {measures['noise'].score:.1f} levels): too little light for the camera.")
    if measures["blur"].score > t.max_blur:
        flags.append(f"{where.capitalize()} is blurry (motion, focus, or a small face enlarged).")
    return flags


class _Photo:
    """The views of one photo the measures read, each made when a measure first asks for it."""

    def __init__(self, image: Image.Image, face: Face | None):
        self.image = image if image.mode == "RGB" else image.convert("RGB")  # read, never changed: no copy
        self.face = face
        self.region = face_region(self.image.size, face) if face is not None else (0, 0, *self.image.size)
        self.native = self.region if face is not None else _central_crop(self.image.size)

    @functools.cached_property
    def region_rgb(self) -> np.ndarray:
        return to_array(self.image.crop(self.region))

    @functools.cached_property
    def native_gray(self) -> np.ndarray:
        return _gray(self.image.crop(self.native))

    def measure(self, name: str) -> Measure:
        if name == "exposure":
            found, region = measure_exposure(self.region_rgb), self.region
        elif name == "color_cast":
            small = self.image.copy()
            small.thumbnail((BLUR_SCALE, BLUR_SCALE), Image.Resampling.BOX)  # the light's colour needs no fine detail
            found, region = measure_color_cast(to_array(small)), (0, 0, *self.image.size)
        elif name == "shadow_harshness":
            landmarks = None if self.face is None else np.asarray(self.face.landmarks, dtype=np.float64) - self.region[:2]
            found, region = measure_shadow_harshness(self.region_rgb, landmarks), self.region
        elif name in ("oversharpening", "jpeg_blockiness", "noise"):
            pixel_scale = {"oversharpening": measure_oversharpening, "jpeg_blockiness": measure_jpeg_blockiness,
                           "noise": measure_noise}
            found, region = pixel_scale[name](self.native_gray), self.native
        elif name == "blur":
            blur_image = self.image.crop(self.region)
            blur_image.thumbnail((BLUR_SCALE, BLUR_SCALE), Image.Resampling.LANCZOS)  # downscale only
            found, region = measure_blur(_gray(blur_image)), self.region
        else:
            raise PortraitkitError(f"Unknown measure {name!r}: choose one of {', '.join(MEASURES)}.")
        found.detail["region"] = list(region)  # (left, top, right, bottom) measured
        return found


def diagnose_image(image: Image.Image, face: Face | None = None, limits: FaceLimits = FaceLimits()) -> Diagnosis:
    """Measure light, colour and processing problems of a photo, on the face region when given.

    `face` is a `portraitkit.faces.detect.Face` (or anything with `box` (left, top, right, bottom) and
    `landmarks` (68, 2) in image pixels). Without a face, shadow_harshness is None. `flags` are
    the measures past `limits`' flag levels.
    """
    photo = _Photo(image, face)
    measures = {name: photo.measure(name) for name in MEASURES}
    return Diagnosis(measures=measures, flags=_flags(measures, face is not None, limits))


def measure_image(image: Image.Image, name: str, face: Face | None = None) -> Measure:
    """One of `diagnose_image`'s measures alone (the same region, the same number), without computing
    the other six: what a row of one problem at growing strength needs."""
    return _Photo(image, face).measure(name)


def plot_scores(ax, diagnoses: dict[str, Diagnosis], limits: FaceLimits = FaceLimits()):
    """Bars of each measure's severity (1 = the flag threshold), one colour per diagnosis: a bar
    past the dashed line is exactly a measure that raised a flag."""
    names = list(MEASURES)
    height = 0.8 / max(len(diagnoses), 1)
    for i, (label, diagnosis) in enumerate(diagnoses.items()):
        values = [limits.severity(name, diagnosis.measures[name]) or 0.0 for name in names]
        positions = np.arange(len(names)) + (i - (len(diagnoses) - 1) / 2) * height
        ax.barh(positions, values, height=height, label=label)
    ax.axvline(1.0, color="C3", ls="--", lw=1)
    ax.set_yticks(np.arange(len(names)), [n.replace("_", " ") for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("measure / its flag threshold (right of the dashed line: flagged)")
    ax.legend(fontsize=8, loc="lower right")
    return ax
