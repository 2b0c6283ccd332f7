"""Simulations of what casual light and phone processing do to a good photo.

Each function takes a PIL image and a strength and returns a new image; random ones take a
`seed` and are deterministic. Notebook 02 uses them to show each problem next to its
diagnosis, and tests use them to check that every measure in `portraitkit.teach.diagnose` grows
with its cause. Light is simulated in linear values (where light adds and multiplies), then
encoded back to sRGB.

`simulate(image, problem, amount)` maps one 0-1 slider to every problem, for widgets.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from portraitkit.teach.colour import LUMINANCE, linear_to_srgb, srgb_to_linear, to_array, to_image
from portraitkit.core.errors import PortraitkitError

if TYPE_CHECKING:
    from portraitkit.faces.detect import Face

# CIE 1931 xy chromaticities of light sources; the camera is assumed white-balanced for daylight
# (D65), so another source tints the picture by its ratio to D65. Phones correct colour
# *temperature* well but leave the green-magenta tint of fluorescent tubes and cheap LEDs, so
# those two are D65 moved off the daylight locus (by 0.03 in y), not a colour temperature.
ILLUMINANTS = {
    "tungsten": (0.44757, 0.40745),  # CIE A, 2856 K (CIE 15:2004): household bulbs, orange
    "shade": (0.28070, 0.28840),  # CIE daylight at 10000 K: blue open shade, overcast sky
    "fluorescent": (0.3127, 0.3590),  # green tint of fluorescent tubes
    "magenta": (0.3127, 0.2990),  # magenta tint of some LED lamps and screens
}
_D65_XY = (0.31271, 0.32902)
_XYZ_TO_RGB = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])


def _white_in_linear_rgb(xy: tuple[float, float]) -> np.ndarray:
    x, y = xy
    rgb = _XYZ_TO_RGB @ np.array([x / y, 1.0, (1 - x - y) / y])
    return rgb / rgb[1]  # same luminance, different colour


def _apply_linear(image: Image.Image, transform: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    linear = srgb_to_linear(to_array(image))
    return to_image(linear_to_srgb(transform(linear)))


def change_exposure(image: Image.Image, stops: float) -> Image.Image:
    """Brighter (positive) or darker (negative) by `stops` (factors of 2 in light), clipping at white."""
    return _apply_linear(image, lambda linear: linear * 2.0**stops)


def add_color_cast(image: Image.Image, strength: float = 0.5, light: str = "tungsten") -> Image.Image:
    """Tint the photo as if lit by `light` while the camera kept its daylight white balance.

    strength 1 is the source uncorrected; phones correct indoor light partly, so 0.3-0.6 is
    typical of a selfie under a ceiling bulb. Per-channel gains are (source / D65) ** strength.
    """
    if light not in ILLUMINANTS:
        raise PortraitkitError(f"Unknown light {light!r}: choose one of {', '.join(ILLUMINANTS)}.")
    gains = (_white_in_linear_rgb(ILLUMINANTS[light]) / _white_in_linear_rgb(_D65_XY)) ** strength
    gains = gains / (gains @ LUMINANCE)  # keep overall brightness
    return _apply_linear(image, lambda linear: linear * gains.astype(np.float32))


def oversharpen(image: Image.Image, strength: float = 1.0, radius: float = 2.0) -> Image.Image:
    """Unsharp mask: add `strength` times (image - blurred image). 1.0 is 100%, a heavy phone look."""
    percent = int(round(100 * max(strength, 0.0)))
    return image.convert("RGB").filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=0))


def compress_jpeg(image: Image.Image, quality: int = 30) -> Image.Image:
    """Round-trip through JPEG at `quality` (1-95); messaging apps re-save at about 70-80, worse when sharing twice."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(np.clip(quality, 1, 95)))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def add_noise(image: Image.Image, sigma: float = 8.0, seed: int = 0) -> Image.Image:
    """Sensor noise: Gaussian, `sigma` in 8-bit levels, mostly in brightness like a phone's output.

    Phones remove most colour noise and leave grain in brightness, so 80% of the variance goes
    to a shared luma term and 20% to independent channels.
    """
    rng = np.random.default_rng(seed)
    rgb = to_array(image)
    shape = rgb.shape[:2]
    shared = rng.standard_normal(shape, dtype=np.float32)[..., None] * np.sqrt(0.8)
    separate = rng.standard_normal((*shape, 3), dtype=np.float32) * np.sqrt(0.2)
    return to_image(rgb + (shared + separate) * (sigma / 255.0))


def blur(image: Image.Image, sigma: float = 2.0) -> Image.Image:
    """Gaussian blur of `sigma` pixels: missed focus, a shaky hand, or a small face enlarged."""
    return image.convert("RGB").filter(ImageFilter.GaussianBlur(radius=sigma))


def _ellipse_mask(shape: tuple[int, int], center: np.ndarray, radii: tuple[float, float]) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    d = ((xx - center[0]) / radii[0]) ** 2 + ((yy - center[1]) / radii[1]) ** 2
    return (d <= 1).astype(np.float32)


def overhead_light_map(size: tuple[int, int], landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a light from above darkens and brightens a face: (shadow, highlight) maps in 0-1.

    Shadows fall where the face turns down or sits under a ledge: the eye sockets under the
    brow, the philtrum under the nose, below the lower lip, and the neck under the jaw.
    Highlights fall on surfaces facing up: forehead and the nose bridge. Shapes are scaled from
    the landmarks (iBUG 68, 0-based) and softened like the penumbra of a real lamp.
    """
    width, height = size
    full = np.asarray(landmarks, dtype=np.float64)
    face_width = np.linalg.norm(full[16] - full[0])
    # work in a window around the head (a 12 MP photo would otherwise need full-size grids)
    left, top = (max(0, int(v - 1.2 * face_width)) for v in full.min(axis=0))
    right = min(width, int(full[:, 0].max() + 1.2 * face_width))
    bottom = min(height, int(full[:, 1].max() + 1.5 * face_width))
    # the maps are smooth: draw them with the face about 200 px wide and enlarge the result
    scale = min(1.0, 200.0 / max(face_width, 1.0))
    pts = (full - [left, top]) * scale
    face_width *= scale
    eye_width = np.mean([np.linalg.norm(pts[39] - pts[36]), np.linalg.norm(pts[45] - pts[42])])
    nose_width = np.linalg.norm(pts[35] - pts[31])
    shape = (max(1, round((bottom - top) * scale)), max(1, round((right - left) * scale)))

    shadow = np.zeros(shape, np.float32)
    for eye in (pts[36:42], pts[42:48]):
        center = eye.mean(axis=0) + np.array([0.0, 0.25 * eye_width])
        shadow = np.maximum(shadow, _ellipse_mask(shape, center, (0.85 * eye_width, 0.65 * eye_width)))
    philtrum = (pts[33] + pts[51]) / 2
    shadow = np.maximum(shadow, _ellipse_mask(shape, philtrum, (0.75 * nose_width, 0.65 * np.linalg.norm(pts[51] - pts[33]))))
    under_lip = (pts[57] + pts[8]) / 2
    shadow = np.maximum(shadow, 0.7 * _ellipse_mask(shape, under_lip, (0.5 * nose_width, 0.3 * np.linalg.norm(pts[8] - pts[57]))))
    # the neck below the jaw line (points 3-13), fading out over a face width
    jaw = pts[3:14]
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    jaw_y = np.interp(xx, jaw[:, 0], jaw[:, 1], left=np.inf, right=np.inf)
    below = np.clip((yy - jaw_y) / (0.1 * face_width), 0, 1) * np.exp(-np.clip(yy - jaw_y, 0, None) / face_width)
    shadow = np.maximum(shadow, below.astype(np.float32))

    highlight = np.zeros(shape, np.float32)
    brows = pts[17:27].mean(axis=0)
    forehead = brows - np.array([0.0, 0.35 * face_width])
    highlight = np.maximum(highlight, _ellipse_mask(shape, forehead, (0.35 * face_width, 0.2 * face_width)))
    bridge = pts[27:31].mean(axis=0)
    highlight = np.maximum(highlight, _ellipse_mask(shape, bridge, (0.35 * nose_width, 0.6 * np.linalg.norm(pts[30] - pts[27]))))

    softness = 0.06 * face_width  # a lamp is not a point: shadow edges are soft
    maps = []
    for window in (shadow, highlight):
        whole = np.zeros((height, width), np.float32)
        soft = Image.fromarray(ndimage.gaussian_filter(window, softness).astype(np.float32))  # mode "F"
        whole[top:bottom, left:right] = np.asarray(soft.resize((right - left, bottom - top), Image.Resampling.BILINEAR))
        maps.append(whole)
    return maps[0], maps[1]


def add_overhead_light(image: Image.Image, strength: float = 0.6, face: Face | None = None) -> Image.Image:
    """Relight a face as if under a ceiling lamp: dark eye sockets, a shadow under the nose and chin.

    strength 1 darkens the deepest shadows by about 3 stops (8x less light) and brightens the
    forehead by half a stop. `face` defaults to the largest face `portraitkit.faces.detect` finds.
    """
    if face is None:
        from portraitkit.faces.detect import detect_faces

        found = detect_faces(image)
        if not found:
            raise PortraitkitError("No face found to relight: use a photo with a clear, frontal face.")
        face = found[0]
    shadow, highlight = overhead_light_map(image.size, face.landmarks)
    strength = max(float(strength), 0.0)
    gain = (2.0 ** (-3.0 * strength * shadow)) * (2.0 ** (0.5 * strength * highlight))
    return _apply_linear(image, lambda linear: linear * gain[..., None])


# --- one slider per problem -------------------------------------------------------------------

PROBLEMS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    # amount 0 leaves the photo (almost) as it is, 1 is a bad but realistic case
    "overhead light": lambda image, amount: add_overhead_light(image, amount),
    "colour cast": lambda image, amount: add_color_cast(image, amount, "tungsten"),
    "over-sharpening": lambda image, amount: oversharpen(image, 3.0 * amount),
    "JPEG compression": lambda image, amount: compress_jpeg(image, round(95 - 90 * amount)),
    "noise": lambda image, amount: add_noise(image, 20.0 * amount),
    "blur": lambda image, amount: blur(image, 4.0 * amount),
}

# What each slider amount means in the problem's own units, for the strips' titles: a learner
# who sees "JPEG quality 50" can compare it with a camera's 90-95 or a messaging app's.
SETTING_WORDS: dict[str, Callable[[float], str]] = {
    "overhead light": lambda amount: f"shadows {3 * amount:.1f} stops deeper",
    "colour cast": lambda amount: f"tungsten cast {amount:.0%}",
    "over-sharpening": lambda amount: f"sharpening x{3 * amount:.2g}",
    "JPEG compression": lambda amount: f"JPEG quality {round(95 - 90 * amount)}",
    "noise": lambda amount: f"noise sigma {20 * amount:.0f}",
    "blur": lambda amount: f"blur sigma {4 * amount:.1f} px",
}


def setting_words(problem: str, amount: float) -> str:
    """`amount` of `problem` said in its own units ("JPEG quality 50"); 0 is "unchanged"."""
    return "unchanged" if amount <= 0 else SETTING_WORDS[problem](amount)


# which measure in `portraitkit.teach.diagnose` each problem should raise
PROBLEM_MEASURES = {
    "overhead light": "shadow_harshness",
    "colour cast": "color_cast",
    "over-sharpening": "oversharpening",
    "JPEG compression": "jpeg_blockiness",
    "noise": "noise",
    "blur": "blur",
}


def simulate(image: Image.Image, problem: str, amount: float) -> Image.Image:
    """Apply one of `PROBLEMS` at `amount` in 0-1 (0: unchanged), for a single widget slider."""
    if problem not in PROBLEMS:
        raise PortraitkitError(f"Unknown problem {problem!r}: choose one of {', '.join(PROBLEMS)}.")
    if amount <= 0:
        return image.convert("RGB").copy()
    return PROBLEMS[problem](image, float(amount))


def plot_problem_strip(image: Image.Image, problem: str, amounts=(0.0, 0.25, 0.5, 0.75, 1.0), face: Face | None = None):
    """One row of the photo with `problem` at each amount, its measure under each; returns (figure, scores).

    With a face, the crops show the face (where the problem is judged) and the measure is taken there.
    """
    import matplotlib.pyplot as plt

    from portraitkit.teach.diagnose import face_region, measure_image

    measure = PROBLEM_MEASURES[problem]
    if face is None and problem == "overhead light":
        from portraitkit.faces.detect import detect_faces

        found = detect_faces(image)
        face = found[0] if found else None
    fig, axes = plt.subplots(1, len(amounts), figsize=(2.6 * len(amounts), 3.2))
    scores = []
    for ax, amount in zip(np.atleast_1d(axes), amounts):
        if problem == "overhead light":
            out = add_overhead_light(image, amount, face) if amount > 0 else image.convert("RGB")
        else:
            out = simulate(image, problem, amount)
        score = measure_image(out, measure, face).score
        scores.append(score)
        shown = out.crop(face_region(out.size, face)) if face is not None else out
        ax.imshow(shown)
        ax.set_title(setting_words(problem, amount), fontsize=9)
        ax.set_xlabel(f"{measure} = {score:.2f}" if score is not None else f"{measure}: n/a", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig, scores
