"""degrade: each simulation does what it says to a real portrait, deterministically."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from portraitkit.teach import degrade
from portraitkit.core.errors import PortraitkitError
from portraitkit.faces.detect import detect_faces


@pytest.fixture(scope="module")
def hopper(portrait_path) -> Image.Image:
    return Image.open(portrait_path).convert("RGB")


@pytest.fixture(scope="module")
def hopper_face(hopper):
    return detect_faces(hopper)[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_every_problem_keeps_size_and_mode_and_zero_is_a_no_op(hopper):
    for problem in degrade.PROBLEMS:
        assert np.array_equal(pixels(degrade.simulate(hopper, problem, 0.0)), pixels(hopper))
    for problem in ("colour cast", "over-sharpening", "JPEG compression", "noise", "blur"):
        out = degrade.simulate(hopper, problem, 0.7)
        assert out.size == hopper.size and out.mode == "RGB"
        assert np.abs(pixels(out) - pixels(hopper)).mean() > 0.5, problem


def test_noise_is_deterministic_per_seed_and_has_the_asked_sigma(hopper):
    a, b, c = (degrade.add_noise(hopper, 10.0, seed=s) for s in (3, 3, 4))
    assert np.array_equal(pixels(a), pixels(b)) and not np.array_equal(pixels(a), pixels(c))
    grey = Image.new("RGB", (200, 200), (128, 128, 128))
    luma = pixels(degrade.add_noise(grey, 10.0)) @ [0.299, 0.587, 0.114]
    assert 9.0 < luma.std() < 11.0


def test_color_cast_tints_the_way_the_light_is_coloured(hopper):
    base = pixels(hopper).reshape(-1, 3).mean(axis=0)
    warm = pixels(degrade.add_color_cast(hopper, 0.8, "tungsten")).reshape(-1, 3).mean(axis=0)
    cool = pixels(degrade.add_color_cast(hopper, 0.8, "shade")).reshape(-1, 3).mean(axis=0)
    green = pixels(degrade.add_color_cast(hopper, 0.8, "fluorescent")).reshape(-1, 3).mean(axis=0)
    assert warm[0] / warm[2] > base[0] / base[2] > cool[0] / cool[2]
    assert green[1] / (green[0] + green[2]) > base[1] / (base[0] + base[2])
    with pytest.raises(PortraitkitError, match="Unknown light"):
        degrade.add_color_cast(hopper, 0.5, "candle")


def test_exposure_is_in_stops(hopper):
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    linear = lambda v: ((v / 255 + 0.055) / 1.055) ** 2.4  # noqa: E731
    brighter = pixels(degrade.change_exposure(grey, 1.0))[0, 0, 0]
    assert linear(brighter) / linear(100) == pytest.approx(2.0, rel=0.02)


def test_blur_and_sharpening_move_edge_energy_opposite_ways(hopper):
    def edge_energy(image):
        return np.abs(np.diff(pixels(image), axis=1)).mean()

    assert edge_energy(degrade.blur(hopper, 2.0)) < edge_energy(hopper) < edge_energy(degrade.oversharpen(hopper, 1.0))


def test_jpeg_quality_controls_loss(hopper):
    errors = [np.abs(pixels(degrade.compress_jpeg(hopper, q)) - pixels(hopper)).mean() for q in (90, 50, 10)]
    assert errors[0] < errors[1] < errors[2]


def test_overhead_light_darkens_under_eyes_and_nose_not_cheeks(hopper, hopper_face):
    lit = pixels(degrade.add_overhead_light(hopper, 1.0, hopper_face)).mean(axis=2)
    base = pixels(hopper).mean(axis=2)
    marks = hopper_face.landmarks

    def ratio(point):
        x, y = np.round(point).astype(int)
        return lit[y - 2 : y + 3, x - 2 : x + 3].mean() / base[y - 2 : y + 3, x - 2 : x + 3].mean()

    eye_width = np.linalg.norm(marks[39] - marks[36])
    under_eye = marks[36:42].mean(axis=0) + [0, 0.4 * eye_width]
    philtrum = (marks[33] + marks[51]) / 2
    cheek = (marks[2] + marks[31]) / 2
    assert ratio(under_eye) < 0.7 and ratio(philtrum) < 0.7
    assert ratio(cheek) > 0.9


def test_overhead_light_without_a_face_says_so():
    with pytest.raises(PortraitkitError, match="No face found"):
        degrade.add_overhead_light(Image.new("RGB", (200, 200), (90, 120, 90)), 0.5)


def test_unknown_problem_is_named():
    with pytest.raises(PortraitkitError, match="Unknown problem"):
        degrade.simulate(Image.new("RGB", (8, 8)), "lens flare", 0.5)
