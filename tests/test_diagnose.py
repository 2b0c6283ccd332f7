"""diagnose: each measure grows with its cause on real portraits, and the report is JSON-ready."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from portraitkit.core.errors import PortraitkitError
from portraitkit.teach import degrade
from portraitkit.faces.quality import FaceLimits
from portraitkit.teach.diagnose import MEASURES, diagnose_image, face_region, measure_image
from portraitkit.faces.detect import detect_faces


@pytest.fixture(scope="module")
def portraits(portrait_path) -> dict[str, tuple[Image.Image, object]]:
    """Real public-domain portraits with their detected faces.

    Grace Hopper (matplotlib) is itself a JPEG saved at about quality 80 (its quantisation
    tables), the astronaut (scikit-image) a lossless PNG.
    """
    found = {"hopper": Image.open(portrait_path).convert("RGB")}
    data = pytest.importorskip("skimage.data")
    found["astronaut"] = Image.fromarray(data.astronaut())
    return {name: (image, detect_faces(image)[0]) for name, image in found.items()}


def scores(images, measure, face=None) -> list[float]:
    return [measure_image(image, measure, face).score for image in images]


def assert_increasing(values, name):
    assert all(b > a for a, b in zip(values, values[1:])), f"{name} not increasing: {np.round(values, 3).tolist()}"


@pytest.mark.parametrize("name", ["hopper", "astronaut"])
@pytest.mark.parametrize("light", ["tungsten", "fluorescent", "shade", "magenta"])
def test_color_cast_grows_with_cast_strength(portraits, name, light):
    image, face = portraits[name]
    # hopper is slightly warm: a blue (shade) cast first cancels that, so it starts further out
    strengths = (0.5, 0.75, 1.0, 1.5) if (name, light) == ("hopper", "shade") else (0.25, 0.5, 0.75, 1.0)
    values = scores([image] + [degrade.add_color_cast(image, s, light) for s in strengths], "color_cast", face)
    assert_increasing(values[1:], f"{name} {light}")
    assert values[-1] > values[0] + 3  # a full-strength cast is far past the photo's own tint


def test_color_cast_direction_names_the_tint(portraits):
    image, _ = portraits["astronaut"]
    directions = {
        light: measure_image(degrade.add_color_cast(image, 0.8, light), "color_cast").detail["direction"]
        for light in ("tungsten", "shade", "fluorescent")
    }
    assert directions["tungsten"].startswith("warm")
    assert directions["shade"].startswith("cool")
    assert "green" in directions["fluorescent"]


@pytest.mark.parametrize("name", ["hopper", "astronaut"])
@pytest.mark.parametrize("on_face", [True, False])
def test_jpeg_blockiness_grows_as_quality_drops(portraits, name, on_face):
    image, face = portraits[name]
    # below the source's own quality (hopper's ~80): re-saving above it changes little either way
    qualities = (90, 70, 50, 30, 15, 5) if name == "astronaut" else (70, 50, 30, 15, 5)
    values = scores([degrade.compress_jpeg(image, q) for q in qualities], "jpeg_blockiness", face if on_face else None)
    assert_increasing(values, f"{name} jpeg")


@pytest.mark.parametrize("name", ["hopper", "astronaut"])
@pytest.mark.parametrize("on_face", [True, False])
def test_oversharpening_grows_with_unsharp_amount(portraits, name, on_face):
    image, face = portraits[name]
    images = [image] + [degrade.oversharpen(image, s) for s in (0.5, 1.0, 2.0, 3.0)]
    assert_increasing(scores(images, "oversharpening", face if on_face else None), f"{name} sharpening")


@pytest.mark.parametrize("name", ["hopper", "astronaut"])
@pytest.mark.parametrize("on_face", [True, False])
def test_noise_grows_with_added_noise_and_reads_in_levels(portraits, name, on_face):
    image, face = portraits[name]
    sigmas = (2.0, 4.0, 8.0, 16.0)
    values = scores([image] + [degrade.add_noise(image, s, seed=1) for s in sigmas], "noise", face if on_face else None)
    assert_increasing(values, f"{name} noise")
    # the estimate is in 8-bit levels: strong added noise reads close to what was added
    assert 0.7 * sigmas[-1] < values[-1] < 1.4 * sigmas[-1]


@pytest.mark.parametrize("name", ["hopper", "astronaut"])
@pytest.mark.parametrize("on_face", [True, False])
def test_blur_grows_with_gaussian_blur(portraits, name, on_face):
    image, face = portraits[name]
    images = [image] + [degrade.blur(image, s) for s in (0.5, 1.0, 2.0, 3.0, 4.0)]
    assert_increasing(scores(images, "blur", face if on_face else None), f"{name} blur")


@pytest.mark.parametrize("name", ["hopper", "astronaut"])
def test_shadow_harshness_grows_with_overhead_light(portraits, name):
    image, face = portraits[name]
    images = [image] + [degrade.add_overhead_light(image, s, face) for s in (0.25, 0.5, 0.75, 1.0)]
    values = scores(images, "shadow_harshness", face)
    assert_increasing(values, f"{name} overhead light")
    assert values[0] < FaceLimits().flag_shadow_stops < values[-1]  # clean photo not flagged, harsh one is


def test_exposure_separates_under_from_over(portraits):
    image, face = portraits["hopper"]
    dark = measure_image(degrade.change_exposure(image, -3), "exposure", face)
    bright = measure_image(degrade.change_exposure(image, 2), "exposure", face)
    normal = measure_image(image, "exposure", face)
    assert dark.detail["dark_clipped_frac"] > normal.detail["dark_clipped_frac"]
    assert bright.detail["bright_clipped_frac"] > normal.detail["bright_clipped_frac"]
    assert dark.detail["mean_luma"] < normal.detail["mean_luma"] < bright.detail["mean_luma"]
    assert bright.score > normal.score and dark.score > normal.score


def test_clean_portraits_raise_no_flags_and_damaged_ones_do(portraits):
    for name, (image, face) in portraits.items():
        assert diagnose_image(image, face).flags == [], name
    image, face = portraits["hopper"]
    damaged = degrade.add_noise(degrade.add_color_cast(image, 0.6), 12.0)
    flags = " ".join(diagnose_image(damaged, face).flags)
    assert "tint" in flags and "grainy" in flags and "JPEG" not in flags
    assert "JPEG" in " ".join(diagnose_image(degrade.compress_jpeg(image, 10), face).flags)


def blown_out(image, face, fraction: float):
    """The photo with the top `fraction` of its face region (forehead first) painted pure white."""
    left, top, right, bottom = face_region(image.size, face)
    out = image.copy()
    out.paste((255, 255, 255), (left, top, right, top + round(fraction * (bottom - top))))
    return out


def test_one_set_of_limits_diagnose_flags_at_and_prep_rejects_at(portraits):
    """A few per cent of the face blown out: diagnose flags it and prep keeps the photo with a
    warning; a fifth: prep rejects it. Both read `FaceLimits`, so moving its flag level moves both."""
    from portraitkit.prep.checks import judge_quality
    from portraitkit.prep.config import PrepConfig
    from portraitkit.prep.photo import Photo

    image, face = portraits["hopper"]
    limits = FaceLimits()
    assert limits.flag_bright_clipped < 0.05 < limits.max_bright_clipped < 0.2
    for fraction, flagged, warned, rejected in [(0.05, True, True, False), (0.2, True, False, True)]:
        diagnosis = diagnose_image(blown_out(image, face, fraction), face)
        photo = Photo(source="x.jpg")
        judge_quality(photo, diagnosis, PrepConfig())
        assert any("blown out" in flag for flag in diagnosis.flags) == flagged, fraction
        assert ("blown_highlights" in photo.warnings) == warned and ("overexposed" in photo.reasons) == rejected, fraction
    relaxed = FaceLimits(flag_bright_clipped=0.1)
    assert not any("blown out" in flag for flag in diagnose_image(blown_out(image, face, 0.05), face, relaxed).flags)
    assert limits.severity("exposure", diagnose_image(blown_out(image, face, 0.05), face).measures["exposure"]) > 1


def test_without_a_face_shadows_are_unmeasured_and_the_rest_measured(portraits):
    image, _ = portraits["hopper"]
    diagnosis = diagnose_image(image)
    assert set(diagnosis.measures) == set(MEASURES)
    assert diagnosis.measures["shadow_harshness"].score is None
    assert all(isinstance(m.score, float) for n, m in diagnosis.measures.items() if n != "shadow_harshness")


def test_to_dict_is_json(portraits):
    image, face = portraits["astronaut"]
    data = json.loads(json.dumps(diagnose_image(image, face).to_dict()))
    assert set(data) == {"measures", "flags"}
    assert set(data["measures"]) == set(MEASURES)
    assert set(data["measures"]["exposure"]["detail"]) >= {"dark_clipped_frac", "bright_clipped_frac", "mean_luma"}
    assert isinstance(data["measures"]["shadow_harshness"]["score"], float)


def test_face_region_is_what_is_measured(portraits):
    """A blurred background leaves a face measurement alone (portrait mode is not a blur problem)."""
    image, face = portraits["hopper"]
    left, top, right, bottom = face.box
    background_blurred = degrade.blur(image, 4.0)
    inner = (left + 20, top + 20, right - 20, bottom - 20)  # well inside the face
    background_blurred.paste(image.crop(inner), inner[:2])
    sharp_face = measure_image(image, "blur", face).score
    assert measure_image(background_blurred, "blur").score > sharp_face + 0.1
    assert measure_image(background_blurred, "blur", face).score < measure_image(degrade.blur(image, 4.0), "blur", face).score


def test_one_measure_alone_is_that_measure_of_the_whole_diagnosis(portraits):
    """measure_image (what the problem strips and these tests use) is diagnose_image's number, region and
    detail, measure by measure, with a face and without."""
    image, face = portraits["hopper"]
    damaged = degrade.add_noise(degrade.add_color_cast(image, 0.6), 6.0)
    for found in (face, None):
        whole = diagnose_image(damaged, found).measures
        assert {name: measure_image(damaged, name, found) for name in MEASURES} == whole
    with pytest.raises(PortraitkitError, match="choose one of exposure"):
        measure_image(image, "sharpness")


def test_tiny_and_flat_images_do_not_crash():
    for image in (Image.new("RGB", (12, 9), (128, 128, 128)), Image.new("RGB", (300, 200), (255, 255, 255))):
        diagnosis = diagnose_image(image)
        assert diagnosis.measures["shadow_harshness"].score is None
        json.dumps(diagnosis.to_dict())


def test_cli_diagnose_json_one_object_per_file_and_bad_files_reported(portrait_path, tmp_path, capsys):
    from portraitkit import cli

    flat = tmp_path / "wall.png"
    Image.new("RGB", (320, 240), (200, 180, 160)).save(flat)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    status = cli.main(["diagnose", str(portrait_path), str(flat), str(broken), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert status == 1  # one file could not be read; the others are still reported
    assert [row["file"] for row in rows] == [str(portrait_path), str(flat), str(broken)]
    hopper, wall, bad = rows
    for row in (hopper, wall):
        assert isinstance(row["flags"], list)
        for name in MEASURES:
            score = row[name]["score"]
            assert score is None if (name == "shadow_harshness" and row is wall) else isinstance(score, float), name
            assert isinstance(row[name]["detail"], dict)
    assert hopper["face_found"] and not wall["face_found"]
    assert "error" in bad


def test_cli_diagnose_goes_on_when_one_photo_breaks_the_measures(portrait_path, tmp_path, capsys, monkeypatch):
    from portraitkit import cli
    from portraitkit.faces import detect

    odd = tmp_path / "odd.png"
    Image.new("RGB", (333, 222), (90, 90, 90)).save(odd)
    real = detect.detect_faces
    monkeypatch.setattr(detect, "detect_faces", lambda image: (_ for _ in ()).throw(RuntimeError("simulated bug"))
                        if image.size == (333, 222) else real(image))
    status = cli.main(["diagnose", str(odd), str(portrait_path), "--json"])
    odd_row, hopper = json.loads(capsys.readouterr().out)
    assert status == 1 and "simulated bug" in odd_row["error"] and hopper["face_found"]


@pytest.mark.parametrize("stops", [-3.0, -1.2, -1.0, -0.5, 0.0, 0.8, 2.0])  # -1: crushed shadows under their limit
def test_the_chart_shows_past_the_line_exactly_what_is_flagged(portraits, stops):
    """plot_scores' bars are severities: above 1 exactly when that measure raised a flag."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from portraitkit.teach.diagnose import plot_scores

    image, face = portraits["hopper"]
    diagnosis = diagnose_image(degrade.change_exposure(image, stops), face)
    exposure_flagged = any(word in flag for flag in diagnosis.flags
                           for word in ("blown out", "crushed", "too dark", "too bright"))
    axes = Figure().subplots()
    plot_scores(axes, {"photo": diagnosis})
    bar = axes.patches[list(MEASURES).index("exposure")].get_width()
    assert (bar > 1) == exposure_flagged, (bar, diagnosis.flags)
