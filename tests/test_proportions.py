"""True proportions (issue 33): the nose's width and length against the face's width, measured on
real photos' 68 landmarks, corrected to a distant camera where the distance is known, compared in
pick and in training's validation.

The photos are the course's samples: real photographs (Grace Hopper's US Navy portrait, public
domain, in many edits; NASA's astronaut Eileen Collins). The 30 cm versions are made here by the
head model's perspective warp (`teach.lens_warp`), so they prove that the measure reads what a
camera's distance moves, not how much a real selfie moves it (no photos of one face from known
distances are here); the noise figures of `faces.proportions` come from
benchmarks/bench_proportions.py on 25 real people.
"""

from __future__ import annotations

import json
import math

import pytest

from portraitkit.faces.detect import detect_faces
from portraitkit.faces.photos import open_photo
from portraitkit.faces.proportions import MEASURED_SHARE, MIN_CHANGE_PCT, Proportions, measure, not_measured, person_proportions
from portraitkit.teach.lens import REFERENCE_CM, distance_for_nose_change, distortion
from portraitkit.teach.lens_warp import warp_to_distance

NEAR_CM = 30.5  # Ward et al.'s selfie distance


def _hopper(samples_dir) -> list:
    """(image, face) of every sample of Hopper's portrait whose face is measurable."""
    pairs = []
    for path in sorted(samples_dir.glob("hopper*")):
        image = open_photo(path)
        found = detect_faces(image)
        if found and not_measured(found[0]) is None:
            pairs.append((image, found[0]))
    return pairs


def _at_30_cm(image, face) -> dict:
    warped, _ = warp_to_distance(image, NEAR_CM, from_cm=REFERENCE_CM, face=face)
    found = detect_faces(warped)
    assert found and not_measured(found[0]) is None
    return measure(found[0].landmarks)


@pytest.fixture(scope="module")
def hopper(samples_dir):
    pairs = _hopper(samples_dir)
    assert len(pairs) >= 8
    return pairs, person_proportions([measure(face.landmarks) for _, face in pairs], "as taken")


def test_renders_of_a_30_cm_camera_read_wider_and_the_photos_themselves_do_not(hopper):
    """The person's own photos sit within their proportions; the same photos re-rendered from 30.5 cm
    (the head model predicts the nose 16.5% wider against the face than from 152 cm) read wider on
    average, beyond the measure's noise for that many portraits; one portrait alone is within the
    noise of one (the benchmark's finding, said, not hidden). Measuring the wrong points (the jaw's
    lower corners, or nose against face height) or leaving out the upright frame would change these."""
    pairs, person = hopper
    assert person.spread["nose_width"] and person.photos == len(pairs)
    originals = person.drift([measure(face.landmarks) for _, face in pairs])
    assert not originals["nose_width"]["beyond"] and abs(originals["nose_width"]["difference_pct"]) < 3
    near = [_at_30_cm(image, face) for image, face in pairs[:6]]
    drift = person.drift(near)
    assert drift["nose_width"]["beyond"] and drift["nose_width"]["difference_pct"] > 6
    assert drift["nose_length"]["difference_pct"] > 6  # the head model: the nose also longer against the face
    assert distortion(NEAR_CM, REFERENCE_CM).nose_to_face_width > drift["nose_width"]["difference_pct"]
    single = person.compare(near[0])["nose_width"]
    assert single["difference_pct"] > 0 and single["difference_pct"] < MIN_CHANGE_PCT and not single["beyond"]


def test_a_turned_head_and_a_missed_layout_are_not_measured(samples_dir):
    """Only near-frontal faces are measured: the course's camera operator, turned towards profile,
    says why."""
    from skimage import data
    from PIL import Image

    found = detect_faces(Image.fromarray(data.camera()).convert("RGB"))
    assert found and "proportions not measured" in not_measured(found[0])


def test_prep_corrects_each_photo_to_a_distant_camera_and_says_how(tmp_path, samples_dir):
    """A photo taken from 30.5 cm has its ratios divided by the head model's widening there (its
    nose width by 1.226); without a distance it is used as taken and the record says how many were;
    report.json's `proportions` of the samples (no EXIF distances) are their median."""
    from portraitkit.prep import proportions
    from portraitkit.prep.photo import Photo

    (image, face), *_ = _hopper(samples_dir)
    near = Photo(source="near.jpg")
    near.measurements["camera_distance_cm"] = NEAR_CM
    proportions.measure(near, face)
    record = near.measurements["proportions"]
    widening = 1 + distortion(NEAR_CM, math.inf).nose_to_face_width / 100
    assert record["distant_camera"]["nose_width"] == pytest.approx(record["as_taken"]["nose_width"] / widening, abs=1e-4)
    unknown = Photo(source="far.jpg")
    proportions.measure(unknown, face)
    assert "distant_camera" not in unknown.measurements["proportions"]
    said = proportions.person([near, unknown, unknown])
    assert said["photos"] == 3 and "1 of 3 photos corrected" in said["corrected"] and "2 without a known distance" in said["corrected"]

    from portraitkit.prep import PrepConfig, prepare

    out = tmp_path / "dataset"
    prepare(samples_dir, out, PrepConfig(resolution=128, one_per_photograph=False))  # the samples are one photograph
    report = json.loads((out / "report.json").read_text())
    accepted = [e for e in report["photos"] if e["status"] == "accepted"]
    measured = [e for e in accepted if "as_taken" in e["measurements"]["proportions"]]
    assert report["proportions"]["photos"] == len(measured) >= 3 and report["proportions"]["spread"]["nose_width"] > 0
    assert 0.15 < report["proportions"]["centre"]["nose_width"] < 0.35
    assert "as taken: no photo's EXIF gave the camera distance" in report["proportions"]["corrected"]


def test_pick_reports_each_portraits_proportions_and_says_a_selfie_nose_in_the_courses_words(hopper, samples_dir):
    """Each judged face's ranking row has `proportions`; one beyond the person's is said as the lens
    model explains it ("as a selfie at about N cm would show it", N where the head model widens the
    nose that much) and costs a penalty; within, nothing is said."""
    from portraitkit.pick.likeness import IdentityScorer, proportions_reason

    pairs, person = hopper
    scorer = IdentityScorer.from_images([image for image, _ in pairs])
    scorer.proportions = person
    warped, _ = warp_to_distance(pairs[0][0], NEAR_CM, from_cm=REFERENCE_CM, face=pairs[0][1])
    row = scorer.score(warped)
    assert row["proportions"]["nose_width"]["difference_pct"] > 0 and "beyond" in row["proportions"]["nose_width"]
    wide = {"nose_width": {"value": 0.27, "difference_pct": 18.0, "beyond": True}}
    said = proportions_reason(wide)
    near = distance_for_nose_change(18.0 / MEASURED_SHARE)  # what the landmarks read of the model's widening
    assert said == f"nose 18% wider against the face than yours, as a selfie at about {near:.0f} cm would show it"
    assert distortion(near, math.inf).nose_to_face_width * MEASURED_SHARE == pytest.approx(18.0, abs=0.01)
    assert proportions_reason({"nose_width": {**wide["nose_width"], "beyond": False}}) is None
    assert "narrower" in proportions_reason({"nose_width": {"value": 0.2, "difference_pct": -16.0, "beyond": True}})


def test_validation_records_the_renders_drift_and_draws_it_beside_the_likeness(tmp_path, hopper):
    """identity.json's step row carries the renders' proportions drift and the record the person's;
    likeness.png gains the proportions panel (wider than the likeness figure alone)."""
    from PIL import Image

    from portraitkit.train.run_folder import plot_likeness
    from portraitkit.train.validate import score_validation_step

    pairs, person = hopper
    renders = [warp_to_distance(image, NEAR_CM, from_cm=REFERENCE_CM, face=face)[0] for image, face in pairs[:4]]
    record = score_validation_step(tmp_path, 10, renders, [image for image, _ in pairs], 10, save_best=lambda folder: None,
                                   proportions=person)
    row = record["steps"][0]
    assert row["proportions"]["nose_width"]["difference_pct"] > 6 and row["proportions"]["nose_width"]["portraits"] == 4
    assert Proportions.from_dict(record["proportions"]).centre == pytest.approx(person.centre, abs=1e-4)
    figure = plot_likeness(tmp_path)
    assert Image.open(figure).width > 900


def test_train_says_when_the_renders_learned_a_selfie_nose_and_what_to_do(tmp_path):
    """The loop's closing advice: renders drifting wider (beyond the noise) with mostly close photos
    point to `prep --correct-distance`; within the noise, or narrower, nothing is said."""
    from portraitkit.train.validate import proportions_advice

    run, dataset = tmp_path / "run", tmp_path / "dataset"
    run.mkdir()
    dataset.mkdir()
    (dataset / "report.json").write_text(json.dumps({"summary": {"camera_distance": {"known": 5, "selfies": 4}}}))

    def identity(difference: float, beyond: bool) -> None:
        row = {"step": 100, "proportions": {"nose_width": {"difference_pct": difference, "beyond": beyond, "portraits": 8}}}
        (run / "identity.json").write_text(json.dumps({"steps": [row]}))

    identity(11.0, True)
    said = proportions_advice(run, dataset)
    assert "11% wider" in said and "4 of 5" in said and "--correct-distance" in said
    identity(4.0, False)
    assert proportions_advice(run, dataset) is None
    identity(-12.0, True)
    assert proportions_advice(run, dataset) is None


def _people_folder():
    """Real photos of several people (PERSON/PHOTO), as tests/test_judge.py finds them; None without."""
    import os
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "people"
    return os.environ.get("PORTRAITKIT_PEOPLE") or (str(shared) if shared.is_dir() else None)


@pytest.mark.skipif(not _people_folder(), reason="real photos of several people (PORTRAITKIT_PEOPLE=FOLDER of PERSON/PHOTO, "
                    "or ../shared/people) are not here: no licence-clean set ships yet")
def test_on_real_people_a_persons_own_photos_stay_within_and_their_30_cm_renders_drift_wider():
    """The issue's test on real shots of real people: for each person with six or more near-frontal
    photos, the ratio's spread between their shots is of the benchmark's order, their own photos'
    mean drift from their proportions is within the noise, and the mean of up to eight of them
    (validation's renders) re-rendered from 30.5 cm is flagged wider. On the calibration set of
    docs/judge.md: 10 of 10 such people flagged with eight, 8 of 10 with four; their own photos 0 of 10."""
    from pathlib import Path

    from portraitkit.faces.proportions import relative_spread_pct

    checked = 0
    for person in sorted(p for p in Path(_people_folder()).iterdir() if p.is_dir()):
        pairs = []
        for path in sorted(person.iterdir()):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            image = open_photo(path)
            found = detect_faces(image)
            if found and not_measured(found[0]) is None and found[0].width >= 100:
                pairs.append((image, found[0]))
        if len(pairs) < 6:
            continue
        ratios = [measure(face.landmarks) for _, face in pairs]
        proportions = person_proportions(ratios, "as taken")
        assert relative_spread_pct([r["nose_width"] for r in ratios]) < 20, person.name
        assert not proportions.drift(ratios)["nose_width"]["beyond"], person.name
        near = [m for m in (_near_or_none(image, face) for image, face in pairs[:8]) if m]
        drift = proportions.drift(near)
        assert drift["nose_width"]["difference_pct"] > 0 and drift["nose_width"]["beyond"], (person.name, drift)
        checked += 1
    assert checked >= 3


def _near_or_none(image, face) -> dict | None:
    """`_at_30_cm`, or None where the re-rendered face is lost (a real photo's edge can cut it)."""
    warped, _ = warp_to_distance(image, NEAR_CM, from_cm=REFERENCE_CM, face=face)
    found = detect_faces(warped)
    return measure(found[0].landmarks) if found and not_measured(found[0]) is None else None
