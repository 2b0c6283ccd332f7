"""The libraries' own functions where portraitkit once wrote its own: each gives the numbers the
textbook formula gives on the sample photos, within a stated tolerance, or differs for a stated
reason. The references below are the formulas as their papers write them, kept here only to check
the libraries against."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from portraitkit.faces.detect import detect_faces
from portraitkit.teach import colour, degrade, diagnose


@pytest.fixture(scope="module")
def faces(samples_dir) -> dict[str, tuple[Image.Image, object]]:
    """Three sample photos with their faces: a studio portrait, another person, a small face."""
    found = {}
    for name in ("hopper.jpg", "astronaut.jpg", "hopper_tiny_face.jpg"):
        image = Image.open(samples_dir / name).convert("RGB")
        found[name] = (image, detect_faces(image)[0])
    return found


# --- Crete's blur effect (teach/diagnose) -----------------------------------------------------------


def crete_blur(gray: np.ndarray) -> float:
    """Crete-Roffet et al. 2007 as written: neighbour differences before and after an 11-pixel box re-blur."""
    scores = []
    for axis in (0, 1):
        original = np.abs(np.diff(gray, axis=axis))
        reblurred = np.abs(np.diff(ndimage.uniform_filter1d(gray, size=11, axis=axis, mode="reflect"), axis=axis))
        total = original.sum()
        scores.append(float((total - np.maximum(0, original - reblurred).sum()) / total))
    return max(scores)


def face_gray(image: Image.Image, face) -> np.ndarray:
    """The face region in 8-bit luma as diagnose measures its blur."""
    region = image.crop(diagnose.face_region(image.size, face))
    region.thumbnail((diagnose.BLUR_SCALE, diagnose.BLUR_SCALE), Image.Resampling.LANCZOS)
    return colour.luma(colour.to_array(region)).astype(np.float64) * 255.0


def crossing(sigmas: np.ndarray, scores: np.ndarray, limit: float) -> float:
    """The blur (Gaussian sigma, px) at which `scores` first pass `limit`, interpolated."""
    k = int(np.argmax(scores > limit))
    assert 0 < k, "the sharp photo must be under the limit and the most blurred over it"
    return float(np.interp(limit, scores[k - 1 : k + 1], sigmas[k - 1 : k + 1]))


def test_blur_limit_means_the_same_gaussian_blur_as_before(faces):
    """scikit-image's `blur_effect` measures edges with Sobel, not neighbour differences, so it reads
    0.05-0.12 higher on sharp faces and 0.01-0.04 higher on blurred ones (measured on every sample
    face at Gaussian blurs of 0-3 px): its own limit, 0.53, was set where the textbook measure
    passed its 0.5, and rejects a face at the same blur, within 0.2 px, on each face here."""
    from portraitkit.faces.quality import FaceLimits

    sigmas = np.arange(0.0, 2.51, 0.25)
    for name, (image, face) in faces.items():
        grays = [face_gray(image if s == 0 else degrade.blur(image, float(s)), face) for s in sigmas]
        ours = np.array([diagnose.measure_blur(gray).score for gray in grays])
        textbook = np.array([crete_blur(gray) for gray in grays])
        assert np.all(np.diff(ours) > 0), f"{name}: the blur score must grow with the blur"
        assert np.all(ours - textbook > -0.01) and np.all(ours - textbook < 0.13), name
        assert abs(crossing(sigmas, ours, FaceLimits().max_blur) - crossing(sigmas, textbook, 0.5)) < 0.2, name


# --- sRGB to CIELAB (teach/diagnose's colour cast) ------------------------------------------------


def textbook_lab(rgb: np.ndarray) -> np.ndarray:
    """CIE 1976 L*a*b* of gamma-encoded sRGB, D65 (IEC 61966-2-1's matrix, rounded to 4 digits)."""
    xyz = colour.srgb_to_linear(rgb.astype(np.float64)) @ np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def test_rgb2lab_is_the_textbook_conversion_within_a_fiftieth_of_a_just_noticeable_difference(samples_dir):
    """Every pixel of three photos within 0.05 CIELAB units (measured at most 0.02; a just-noticeable
    difference is about 2): the matrices differ only in their rounding."""
    from skimage.color import rgb2lab

    for name in ("hopper.jpg", "astronaut.jpg", "coffee.jpg"):
        rgb = colour.to_array(Image.open(samples_dir / name))
        assert np.abs(rgb2lab(rgb) - textbook_lab(rgb)).max() < 0.05, name


def test_the_colour_cast_is_measured_in_the_libraries_cielab(faces):
    """The cast's chroma is the light's a*, b* from rgb2lab: a warm cast reads warm, and by the amount the textbook gives."""
    image, _ = faces["hopper.jpg"]
    cast = diagnose.measure_color_cast(colour.to_array(degrade.add_color_cast(image, 0.6, "tungsten")))
    assert cast.detail["direction"].startswith("warm") and cast.score > 8
    assert np.hypot(cast.detail["a"], cast.detail["b"]) == pytest.approx(cast.score)


# --- the piecewise-affine warp (teach/lens_warp) ----------------------------------------------------


def barycentric_warp(image: Image.Image, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Delaunay triangles over the target points; each pixel inside takes the bilinear colour at
    the same barycentric position in the source triangle; pixels outside stay."""
    from scipy.spatial import Delaunay

    pixels = np.asarray(image, dtype=np.float32)
    triangles = Delaunay(target)
    ys, xs = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    query = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    simplex = triangles.find_simplex(query)
    inside = simplex >= 0
    transform = triangles.transform[simplex[inside]]
    partial = np.einsum("nij,nj->ni", transform[:, :2], query[inside] - transform[:, 2])
    weights = np.concatenate([partial, 1 - partial.sum(axis=1, keepdims=True)], axis=1)
    at = np.einsum("ni,nij->nj", weights, source[triangles.simplices[simplex[inside]]])
    out = pixels.copy()
    rows, cols = query[inside, 1].astype(int), query[inside, 0].astype(int)
    for channel in range(3):
        out[rows, cols, channel] = ndimage.map_coordinates(pixels[..., channel], [at[:, 1], at[:, 0]], order=1, mode="nearest")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def test_piecewise_affine_warp_is_the_barycentric_mesh_warp(faces):
    """The 30 cm re-render of two faces (landmarks moved by the head model, corners held) is the
    reference warp to within one 8-bit level (measured identical), over the whole photo."""
    from portraitkit.teach.lens_warp import piecewise_affine_warp, reproject_landmarks

    for name in ("hopper.jpg", "astronaut.jpg"):
        image, face = faces[name]
        width, height = image.size
        corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=np.float64)
        source = np.concatenate([face.landmarks, corners])
        target = np.concatenate([reproject_landmarks(face.landmarks, 150.0, 30.0), corners])
        ours = np.asarray(piecewise_affine_warp(image, source, target), dtype=np.int16)
        reference = barycentric_warp(image, source, target).astype(np.int16)
        assert np.abs(ours - reference).max() <= 1, name
        assert (ours != np.asarray(image)).any(axis=-1).mean() > 0.01, f"{name}: the warp must move the face"


# --- the image grid (core/grids) ----------------------------------------------------------------------


def test_image_grid_is_diffusers_grid_where_that_can_draw_it_and_draws_what_it_cannot(samples_dir):
    """Equal squares filling every cell: pixel for pixel diffusers' `make_image_grid`. Six in four
    columns, or pictures of other shapes: diffusers' asserts or crops, ours fits them (white cells)."""
    from diffusers.utils import make_image_grid

    from portraitkit.core.grids import image_grid

    photo = Image.open(samples_dir / "hopper.jpg").convert("RGB")
    squares = [photo.crop((0, 0, 128, 128)), photo.crop((200, 200, 328, 328)), photo.rotate(90).crop((0, 0, 128, 128)),
               photo.crop((100, 300, 228, 428))]
    assert np.array_equal(np.asarray(image_grid(squares, columns=2)), np.asarray(make_image_grid(squares, rows=2, cols=2)))

    six = squares + squares[:2]
    with pytest.raises(AssertionError):
        make_image_grid(six, rows=2, cols=4)
    grid = image_grid(six, columns=4)
    assert grid.size == (4 * 128, 2 * 128)
    assert np.asarray(grid.crop((2 * 128, 128, 4 * 128, 256))).min() == 255  # the two empty cells stay white
    tall = image_grid([squares[0], photo], columns=2, cell=128)  # the whole portrait, letterboxed in its cell
    assert np.asarray(tall.crop((128, 0, 128 + 10, 128))).min() == 255


# --- the fp32 cast of trainable parameters (models/lora) -------------------------------------------


def test_adapters_train_in_fp32_on_an_fp16_model():
    """The LoRA weights become fp32; the frozen fp16 base stays fp16 (its
    memory is the point of fp16 on a T4)."""
    import torch

    from portraitkit.models.lora import add_adapters

    torch.manual_seed(0)
    model = torch.nn.Sequential()
    model.add_module("to_q", torch.nn.Linear(16, 16))
    model.add_module("to_v", torch.nn.Linear(16, 16))
    model.add_module("proj", torch.nn.Linear(16, 16))
    model.requires_grad_(False)
    model.half()
    trainable = add_adapters(model, rank=4, targets=["to_q", "to_v"])
    assert trainable and all(p.dtype == torch.float32 and p.requires_grad for p in trainable)
    lora_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora_names and all("lora_" in n for n in lora_names)
    assert all(p.dtype == torch.float16 for n, p in model.named_parameters() if n not in lora_names)
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters() if n in lora_names}  # what the optimizer steps
