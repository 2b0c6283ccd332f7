"""prep.distance: camera distance from EXIF and the face's size, the arm's-length warning, and the
distance correction, on copies of the sample photos with generated EXIF."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from portraitkit import cli

from portraitkit.teach import lens
from portraitkit.faces.detect import detect_faces
from portraitkit.prep import PrepConfig, prepare
from portraitkit.prep import distance

EXIF_IFD, FOCAL_35MM, FOCAL, PLANE_X_RES, PLANE_UNIT, EXIF_WIDTH, EXIF_HEIGHT = 0x8769, 0xA405, 0x920A, 0xA20E, 0xA210, 0xA002, 0xA003
SELFIES = ["hopper.jpg", "hopper_soft.jpg", "hopper_tilted_bright.jpg", "hopper_warm_closeup.jpg", "hopper_mirrored_dim.webp"]


def with_exif(source, target, **tags):
    """A copy of `source` with the given EXIF sub-IFD tags, written by Pillow as a camera would."""
    exif = Image.Exif()
    ifd = exif.get_ifd(EXIF_IFD)
    for tag, value in tags.items():
        ifd[{"focal_35mm": FOCAL_35MM, "focal": FOCAL, "plane_x_res": PLANE_X_RES, "plane_unit": PLANE_UNIT,
             "width": EXIF_WIDTH, "height": EXIF_HEIGHT}[tag]] = value
    with Image.open(source) as image:
        image.convert("RGB").save(target, exif=exif, quality=95)
    return target


def test_focal_length_from_either_exif_form(tmp_path, samples_dir):
    direct = with_exif(samples_dir / "hopper.jpg", tmp_path / "a.jpg", focal_35mm=26)
    assert distance.focal_35mm(direct) == (26.0, "FocalLengthIn35mmFilm")
    # a phone's 4.2 mm lens on a 5.6 x 4.2 mm sensor (4032 x 3024 px): crop 43.27 / 7.0 = 6.18
    crop = with_exif(samples_dir / "hopper.jpg", tmp_path / "b.jpg", focal=4.2, plane_x_res=4032 / 5.6 * 25.4,
                     plane_unit=2, width=4032, height=3024)
    focal, how = distance.focal_35mm(crop)
    assert focal == pytest.approx(4.2 * math.hypot(36, 24) / 7.0, rel=1e-3) and "crop" in how
    assert distance.focal_35mm(samples_dir / "hopper.jpg") == (None, None)  # no EXIF: unknown, not guessed


def test_distance_follows_the_pinhole(samples_dir):
    image = Image.open(samples_dir / "hopper.jpg").convert("RGB")
    face = detect_faces(image)[0]
    at_26 = distance.camera_distance_cm(face.landmarks, image.size, 26.0)
    at_52 = distance.camera_distance_cm(face.landmarks, image.size, 52.0)
    # the same face in a 52 mm frame is twice as far from the eyes; to the nose tip, which is the
    # eye-to-tip depth nearer, that leaves at_52 - 2 * at_26 = that depth (a few cm)
    assert 1.5 < at_52 - 2 * at_26 < 4.5
    assert 20 < at_26 < 45  # the sample portrait fills the frame like an arm's-length phone selfie
    assert distance.camera_distance_cm(face.landmarks, image.size, None) is None


@pytest.fixture(scope="module")
def selfie_folder(samples_dir, tmp_path_factory):
    """Five sample photos as 26 mm phone shots (EXIF written here) and one photo without EXIF."""
    folder = tmp_path_factory.mktemp("selfies")
    for name in SELFIES:
        with_exif(samples_dir / name, folder / f"{name.split('.')[0]}.jpg", focal_35mm=26)
    shutil.copy(samples_dir / "hopper_phone_sideways.jpg", folder / "no_exif.jpg")
    return folder


def test_prep_reports_distances_and_warns_on_a_set_of_selfies(selfie_folder, tmp_path):
    prepare(selfie_folder, tmp_path / "ds", PrepConfig(min_accepted=1, one_per_photograph=False))
    report = json.loads((tmp_path / "ds" / "report.json").read_text())
    by_name = {p["source"]: p for p in report["photos"]}
    assert by_name["no_exif.jpg"]["measurements"]["camera_distance_cm"] is None
    assert "EXIF" in by_name["no_exif.jpg"]["measurements"]["camera_distance"]["unknown"]
    known = [p for name, p in by_name.items() if name != "no_exif.jpg"]
    for photo in known:
        cm = photo["measurements"]["camera_distance_cm"]
        assert isinstance(cm, float) and 15 < cm < 60, photo["source"]
        assert photo["measurements"]["camera_distance"]["uncertainty_cm"] > 0
    assert any("close_camera" in p["warnings"] for p in known)
    advice = " ".join(report["variety"]["advice"])
    assert "wider" in advice and "1-2 m" in advice and "--correct-distance" in advice
    assert report["summary"]["camera_distance"]["known"] == len(known)
    assert report["summary"]["camera_distance"]["selfies"] >= 3


def test_correct_distance_narrows_the_nose_by_what_the_head_model_predicts(samples_dir, tmp_path, nose_wings_after):
    photo_path = with_exif(samples_dir / "hopper.jpg", tmp_path / "selfie.jpg", focal_35mm=26)
    image = Image.open(photo_path).convert("RGB")
    face = detect_faces(image)[0]
    from portraitkit.prep.photo import Photo

    photo, config = Photo(source="selfie.jpg"), PrepConfig(correct_distance=True)
    distance.measure(photo, photo_path, image, face, config)
    taken_from = photo.measurements["camera_distance_cm"]
    warped, moved_face = distance.correct(photo, image, face, config)
    assert photo.measurements["corrected_from_cm"] == taken_from
    # follow the image content at the nose wings (not a landmark detector's guess) through the warp
    marks = face.landmarks
    wings = nose_wings_after(image, warped, marks)
    measured = (wings[35][0] - wings[31][0]) / (marks[35, 0] - marks[31, 0]) - 1
    # the jaw outline stays put (same framing), so the nose/face change is the nose's own
    predicted = 1 / (1 + lens.distortion(taken_from, config.correct_to_cm).nose_to_face_width / 100) - 1
    assert predicted < -0.1  # about 14% narrower from 30 cm to 150 cm
    assert measured == pytest.approx(predicted, abs=0.05)
    assert moved_face is not face  # the face was found again on the corrected photo


def test_prep_correct_distance_records_where_each_photo_came_from(selfie_folder, tmp_path, capsys):
    out = tmp_path / "corrected"
    assert cli.main(["prep", str(selfie_folder), "--out", str(out), "--correct-distance", "--allow-same-photograph"]) == 0
    report = json.loads((out / "report.json").read_text())
    corrected = [p for p in report["photos"] if p["measurements"].get("corrected_from_cm") is not None]
    assert corrected and all(p["measurements"]["corrected_from_cm"] == p["measurements"]["camera_distance_cm"] for p in corrected)
    untouched = [p for p in report["photos"] if p["source"] == "no_exif.jpg"][0]
    assert "corrected_from_cm" not in untouched["measurements"]  # unknown distance: nothing to correct
    assert report["config"]["correct_distance"] is True
    # with every selfie corrected, the set no longer gets the arm's-length advice
    assert not any("--correct-distance" in line for line in report["variety"]["advice"])


def test_warp_to_30_cm_and_back_returns_the_nose_to_face_ratio(samples_dir):
    """The issue's check on a real photo: dlib's own landmarks, before and after the round trip."""
    from portraitkit.teach.lens_warp import warp_to_distance

    image = Image.open(samples_dir / "hopper.jpg").convert("RGB")

    def nose_to_face(landmarks):
        return np.linalg.norm(landmarks[35] - landmarks[31]) / np.linalg.norm(landmarks[16] - landmarks[0])

    face = detect_faces(image)[0]
    near, _ = warp_to_distance(image, 30.5, from_cm=150, face=face)
    near_face = detect_faces(near)[0]
    back, _ = warp_to_distance(near, 150, from_cm=30.5, face=near_face)
    after = nose_to_face(detect_faces(back)[0].landmarks)
    assert nose_to_face(near_face.landmarks) > nose_to_face(face.landmarks)  # up close the nose widened...
    assert after == pytest.approx(nose_to_face(face.landmarks), rel=0.03)  # ...and the way back undid it
