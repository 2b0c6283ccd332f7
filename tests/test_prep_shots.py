"""prep counts one photograph once, never reads its own datasets, and tells backgrounds apart.

Here on the samples (edits of one photograph of Grace Hopper, and Eileen Collins); that distinct
shots of one real person are never merged is tested on real people's photos in tests/test_judge.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image, ImageEnhance

from portraitkit.faces.detect import detect_faces
from portraitkit.prep import PrepConfig, checks, prepare
from portraitkit.prep.overrides import set_decision
from portraitkit.prep.photo import Photo
from portraitkit.prep.shots import shot


@pytest.fixture(scope="module")
def one_shot(samples_dir, tmp_path_factory):
    """hopper.jpg, two crops of it and a mirrored, dimmed re-encode, beside another person's photo."""
    photos = tmp_path_factory.mktemp("one-shot")
    hopper = Image.open(samples_dir / "hopper.jpg").convert("RGB")
    hopper.save(photos / "original.jpg", quality=95)
    hopper.crop((60, 90, 470, 560)).save(photos / "crop_wide.jpg", quality=90)
    hopper.crop((150, 110, 420, 400)).save(photos / "crop_face.png")
    mirrored = ImageEnhance.Brightness(hopper.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).enhance(0.8)
    mirrored.save(photos / "mirrored.webp", quality=80)
    shutil.copy(samples_dir / "astronaut.jpg", photos / "someone.jpg")
    out = tmp_path_factory.mktemp("one-shot-dataset")
    result = prepare(photos, out, PrepConfig(resolution=128))
    return photos, out, {entry["source"]: entry for entry in result.entries}


def test_crops_and_a_mirrored_copy_count_once_naming_the_one_kept(one_shot):
    _, _, entries = one_shot
    assert entries["original.jpg"]["status"] == "accepted"
    for name in ("crop_wide.jpg", "crop_face.png", "mirrored.webp"):
        entry = entries[name]
        assert entry["reasons"] == ["same_photograph"], name
        assert "original.jpg" in entry["message"] and entry["measurements"]["duplicate_of"] == "original.jpg"
    # another person's portrait, framed alike, is a photograph of its own
    assert "same_photograph" not in entries["someone.jpg"]["reasons"]


def test_the_learner_can_use_a_same_photograph_rejection(one_shot, tmp_path):
    photos, out, _ = one_shot
    dataset = tmp_path / "dataset"
    shutil.copytree(out, dataset)
    entry = set_decision(dataset, "crop_face.png", use=True, photos_dir=photos)
    assert entry["status"] == "accepted" and entry["override"] and entry["reasons"] == ["same_photograph"]
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert entry["output"] in {row["file_name"] for row in rows} and (dataset / entry["output"]).is_file()


def test_a_mirrored_crop_lines_up_and_another_portrait_does_not(samples_dir):
    """The mechanics on one photograph (distinct shots of one real person: tests/test_judge.py)."""
    from portraitkit.faces.photograph import MIN_CORRELATION, MIN_INLIERS, compare, fingerprint

    hopper = Image.open(samples_dir / "hopper.jpg").convert("RGB")
    astronaut = Image.open(samples_dir / "astronaut.jpg").convert("RGB")
    crop = hopper.crop((40, 60, 480, 560)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored_crop = compare(fingerprint(hopper), fingerprint(crop))
    assert mirrored_crop.same and mirrored_crop.mirrored
    assert mirrored_crop.inliers > 2 * MIN_INLIERS and mirrored_crop.correlation > (1 + MIN_CORRELATION) / 2  # a wide margin
    assert mirrored_crop.scale == pytest.approx(hopper.width / 440, rel=0.05)  # the crop's pixels are the photo's, enlarged
    other = compare(fingerprint(hopper), fingerprint(astronaut))
    assert other is None or (other.inliers < MIN_INLIERS and not other.same)


def test_prep_never_reads_a_dataset_it_wrote(samples_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("hopper.jpg", "astronaut.jpg"):
        shutil.copy(samples_dir / name, photos / name)
    first = prepare(photos, photos / "dataset", PrepConfig(resolution=128))
    again = prepare(photos, photos / "dataset", PrepConfig(resolution=128))
    elsewhere = prepare(photos, photos / "dataset-2", PrepConfig(resolution=128))  # the first one is now just a folder in photos/
    accepted = [sorted(e["source"] for e in run.accepted) for run in (first, again, elsewhere)]
    assert accepted[0] == accepted[1] == accepted[2] == ["astronaut.jpg", "hopper.jpg"]
    assert [e["source"] for e in elsewhere.entries] == ["astronaut.jpg", "hopper.jpg"]
    assert elsewhere.summary["ignored_files"] == ["dataset/ (a dataset prep wrote)"]


def _photo(image: Image.Image, name: str) -> Photo:
    face = detect_faces(image)[0]
    return Photo(source=name, shot=shot(image, face.landmarks),
                 measurements={"face": {"yaw_degrees": 0.0}, "look": {"side_light_stops": 0.0, "mouth_open": 0.0}})


def test_crops_of_one_backdrop_are_one_background(samples_dir):
    hopper = Image.open(samples_dir / "hopper.jpg").convert("RGB")
    crops = [_photo(hopper.crop(box), f"crop{n}") for n, box in enumerate([(0, 0, 512, 600), (30, 40, 500, 580), (0, 60, 470, 600)])]
    one_place = checks.variety(crops, PrepConfig())["background"]
    assert one_place["backgrounds"] == 1 and not one_place["varied"]
    # the same person cut out onto other backgrounds (as data/samples' cutout): new places
    cutout = Image.open(samples_dir / "hopper_cutout.png").convert("RGBA")
    elsewhere = []
    for n, colour in enumerate([(235, 235, 230), (40, 120, 60)]):
        backdrop = Image.new("RGB", cutout.size, colour)
        backdrop.paste(cutout, mask=cutout.getchannel("A"))
        elsewhere.append(_photo(backdrop, f"place{n}"))
    places = checks.variety(crops[:1] + elsewhere, PrepConfig())["background"]
    assert places["backgrounds"] == 3 and places["varied"]


def test_a_head_turned_too_far_is_named_not_missed(tmp_path):
    """scikit-image's cameraman (CC0): found by the CNN fallback, its 68 landmarks unreliable, so
    prep says what is wrong ("turned too far") instead of "no face found"."""
    skimage_data = pytest.importorskip("skimage.data")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage_data.camera()).save(photos / "cameraman.png")
    [entry] = prepare(photos, tmp_path / "dataset", PrepConfig(resolution=128)).entries
    assert entry["reasons"] == ["turned_away"] and entry["measurements"]["face"]["detector"] == "cnn"
