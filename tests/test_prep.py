"""prep on the sample photos and on generated bad files: the decision and reasons for each file."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portraitkit import cli

from portraitkit.faces import detect
from portraitkit.core.errors import PortraitkitError
from portraitkit.prep import REJECTIONS, WARNINGS, PrepConfig, prepare

# The Grace Hopper samples are one photograph edited fifteen ways, standing in for the different
# photos a user takes (data/samples/README.md): prep counts them once unless told they are meant.
STAND_INS = {"one_per_photograph": False}

# What data/samples/README.md promises, file by file: (status, reasons, warnings that must be there).
EXPECTED = {
    "hopper.jpg": ("accepted", [], []),
    "hopper_warm_closeup.jpg": ("accepted", [], ["color_cast"]),
    "hopper_tilted_bright.jpg": ("accepted", [], []),
    "hopper_mirrored_dim.webp": ("accepted", [], []),
    "hopper_phone_sideways.jpg": ("accepted", [], []),
    "hopper_greyscale.png": ("accepted", [], ["tight_crop"]),
    "hopper_cutout.png": ("accepted", [], []),
    "hopper_overhead.heic": ("accepted", [], ["harsh_shadows"]),
    "hopper_soft.jpg": ("accepted", [], []),
    "hopper_blurry.jpg": ("rejected", ["blurry"], []),
    "hopper_underexposed.jpg": ("rejected", ["underexposed"], []),
    "hopper_overexposed.jpg": ("rejected", ["overexposed"], []),
    "hopper_duplicate.jpg": ("rejected", ["duplicate"], []),
    "hopper_tiny_face.jpg": ("rejected", ["face_too_small"], []),
    "two_people.jpg": ("rejected", ["multiple_faces", "face_too_small"], []),
    "astronaut.jpg": ("rejected", ["different_person"], []),
    "coffee.jpg": ("rejected", ["no_face"], []),
}


@pytest.fixture(scope="module")
def samples_run(samples_dir, tmp_path_factory):
    """The sample folder prepared once for the whole module (about 5 s on 2 cores)."""
    out = tmp_path_factory.mktemp("samples-dataset")
    result = prepare(samples_dir, out, PrepConfig(**STAND_INS))
    return result, out, json.loads((out / "report.json").read_text())


def test_every_sample_gets_the_documented_decision(samples_run):
    result, _, report = samples_run
    entries = {entry["source"]: entry for entry in report["photos"]}
    assert set(entries) == set(EXPECTED)
    for source, (status, reasons, warnings) in EXPECTED.items():
        entry = entries[source]
        assert (entry["status"], entry["reasons"]) == (status, reasons), source
        assert set(warnings) <= set(entry["warnings"]), source
        assert set(entry["reasons"]) <= set(REJECTIONS) and set(entry["warnings"]) <= set(WARNINGS)
        assert (entry["output"] is None) == (status == "rejected"), source
    assert result.enough and len(result.accepted) == 9


def test_consensus_not_the_first_file_decides_identity(samples_run):
    _, _, report = samples_run
    entries = {entry["source"]: entry for entry in report["photos"]}
    # astronaut.jpg sorts first, yet the set's majority (Grace Hopper) is the person
    assert report["photos"][0]["source"] == "astronaut.jpg"
    assert entries["astronaut.jpg"]["measurements"]["identity_distance"] > detect.SAME_PERSON_THRESHOLD
    assert entries["hopper.jpg"]["measurements"]["identity_distance"] < 0.3


def test_copies_of_someone_else_do_not_outvote_the_person(tmp_path, samples_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("hopper.jpg", "hopper_soft.jpg"):
        shutil.copy(samples_dir / name, photos / name)
    # a friend's photo saved three times (the original, a resized copy, a re-compressed one)
    friend = Image.open(samples_dir / "astronaut.jpg")
    friend.save(photos / "friend.jpg", quality=95)
    friend.resize((friend.width * 9 // 10, friend.height * 9 // 10)).save(photos / "friend_small.jpg", quality=90)
    friend.save(photos / "friend_whatsapp.jpg", quality=70)
    # 128 px training images: the friend's face is large enough, so only identity can tell
    report = prepare(photos, tmp_path / "dataset", PrepConfig(resolution=128, **STAND_INS)).entries
    decisions = {e["source"]: e["reasons"] for e in report}
    assert decisions["hopper.jpg"] == [] and decisions["hopper_soft.jpg"] == []
    assert decisions["friend.jpg"] == ["different_person"]
    assert all("duplicate" in decisions[name] for name in ("friend_small.jpg", "friend_whatsapp.jpg"))


def test_duplicate_keeps_the_larger_original(samples_run):
    _, _, report = samples_run
    duplicate = next(e for e in report["photos"] if e["source"] == "hopper_duplicate.jpg")
    assert duplicate["measurements"]["duplicate_of"] == "hopper.jpg"
    evidence = duplicate["measurements"]["same_photograph"]  # the whole frame lined up, as re-saved
    assert duplicate["reasons"] == ["duplicate"] and not evidence["mirrored"] and abs(evidence["scale"] - 1) < 0.03


def test_tiny_face_is_not_silently_enlarged(samples_run):
    _, _, report = samples_run
    tiny = next(e for e in report["photos"] if e["source"] == "hopper_tiny_face.jpg")
    assert tiny["measurements"]["crop"]["upscale"] > PrepConfig().max_upscale
    enlarged = [e for e in report["photos"] if e["status"] == "accepted" and e["measurements"]["crop"]["upscale"] > 1.15]
    assert all("low_resolution" in e["warnings"] for e in enlarged)


def test_report_summary_and_variety(samples_run):
    _, out, report = samples_run
    summary = report["summary"]
    assert (summary["inputs"], summary["accepted"], summary["rejected"]) == (17, 9, 8)
    assert summary["rejected_by_reason"]["face_too_small"] == 2
    assert summary["enough_to_train"] and summary["min_accepted"] == 5
    # one photograph in several versions: same pose and expression, and the report says so
    variety = report["variety"]
    assert not variety["head_pose"]["varied"] and not variety["expression"]["varied"]
    assert any("turned" in advice for advice in variety["advice"])
    # ...and one backdrop, however each version is cropped: the whole frames' colours differ,
    # the background beside the face (in the face's own frame) does not
    assert not variety["background"]["varied"] and any("different places" in advice for advice in variety["advice"])
    accepted = next(e for e in report["photos"] if e["source"] == "hopper.jpg")
    assert {"faces_found", "face", "quality", "crop", "look", "identity_distance"} <= set(accepted["measurements"])
    assert set(accepted["measurements"]["quality"]["measures"]) >= {"blur", "exposure", "color_cast"}
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width >= 5 * 220 and sheet.height > 4 * 220  # 17 thumbnails in rows of 5


def test_dataset_is_an_imagefolder_with_captions(samples_run):
    datasets = pytest.importorskip("datasets")
    _, out, report = samples_run
    dataset = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    # masks/ is no training image; SDXL's size and crop conditioning ride along
    assert len(dataset) == 9 and set(dataset.column_names) == {"image", "text", "mask", "original_size", "crop_top_left"}
    assert all(text.startswith("a photo of sks person, ") for text in dataset["text"])
    assert dataset[0]["image"].size == (512, 512)
    captions = {e["source"]: e["caption"] for e in report["photos"]}
    assert "black and white" in captions["hopper_greyscale.png"]
    assert "warm light" in captions["hopper_warm_closeup.jpg"]
    assert "black and white" not in captions["hopper.jpg"]
    # no stray files: only prepared images, the three documents
    assert {p.name for p in out.iterdir()} == {e["output"] for e in report["photos"] if e["output"]} | {
        "metadata.jsonl", "report.json", "contact_sheet.png", "masks"}


def test_crops_are_straightened_and_face_centred(samples_run):
    _, out, _ = samples_run
    for name in ("hopper.png", "hopper_tilted_bright.png", "hopper_cutout.png", "hopper_phone_sideways.png"):
        crop = Image.open(out / name).convert("RGB")
        (face,) = detect.detect_faces(crop)
        assert abs(face.roll_degrees()) < 2.5, name  # sources rolled by -4 to -11 degrees
        left_eye, right_eye = face.eye_centers()
        eyes = (left_eye + right_eye) / 2 / 512
        assert 0.35 < eyes[0] < 0.65, name
        if name != "hopper_phone_sideways.png":  # that one is framed with the head at the top edge
            assert 0.25 < eyes[1] < 0.5, name  # 0.4 when the photo leaves room above the head


# --- generated bad files ------------------------------------------------------------------------


def _header_only_png(path: Path, width: int, height: int) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def messy_folder(samples_dir, portrait_path, tmp_path_factory) -> Path:
    """Four good samples plus every kind of file that must not stop a run."""
    folder = tmp_path_factory.mktemp("messy")
    for name in ("hopper.jpg", "hopper_soft.jpg", "hopper_tilted_bright.jpg", "hopper_mirrored_dim.webp"):
        shutil.copy(samples_dir / name, folder / name)
    hopper = Image.open(portrait_path).convert("RGB")
    data = Path(portrait_path).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list, not a photo\n")
    _header_only_png(folder / "huge.png", 12000, 9000)  # 108 MP declared
    (folder / "notes.txt").write_text("not a photo and not named like one\n")
    # good photos in awkward encodings, each framed differently so none is a duplicate
    grey16 = np.asarray(hopper.convert("L").crop((0, 40, 470, 600)), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(folder / "scan16.png")
    hopper.crop((40, 0, 512, 520)).convert("CMYK").save(folder / "print_cmyk.jpg", quality=92)
    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated the other way: "rotate 90 counter-clockwise to view"
    hopper.crop((0, 0, 480, 540)).transpose(Image.Transpose.ROTATE_270).save(folder / "exif8.jpg", exif=exif)
    # a dominant face with a small one behind it: kept
    group = hopper.copy()
    group.paste(Image.open(samples_dir / "astronaut.jpg").resize((150, 150)), (362, 0))
    group.crop((0, 0, 512, 560)).save(folder / "with_someone_behind.jpg", quality=92)
    (folder / "trip").mkdir()
    hopper.crop((30, 60, 500, 600)).save(folder / "trip" / "IMG 0001.jpg", quality=90)
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    return folder


MESSY_EXPECTED = {
    "hopper.jpg": ("accepted", []),
    "hopper_soft.jpg": ("accepted", []),
    "hopper_tilted_bright.jpg": ("accepted", []),
    "hopper_mirrored_dim.webp": ("accepted", []),
    "truncated.jpg": ("rejected", ["unreadable"]),
    "empty.jpg": ("rejected", ["unreadable"]),
    "notes.jpg": ("rejected", ["unreadable"]),
    "huge.png": ("rejected", ["unreadable"]),
    "scan16.png": ("accepted", []),
    "print_cmyk.jpg": ("accepted", []),
    "exif8.jpg": ("accepted", []),
    "with_someone_behind.jpg": ("accepted", []),
    "trip/IMG 0001.jpg": ("accepted", []),
    "broken_by_a_bug.jpg": ("rejected", ["processing_error"]),
}


def test_bad_files_are_rejected_and_the_run_goes_on(messy_folder, tmp_path, monkeypatch):
    # One photo makes the detector itself fail, as a library bug would: only that photo is lost.
    Image.open(messy_folder / "hopper.jpg").crop((80, 100, 512, 600)).resize((333, 390)).save(tmp_path / "odd.jpg")
    shutil.copy(tmp_path / "odd.jpg", messy_folder / "broken_by_a_bug.jpg")
    real_detect = detect.detect_faces

    def fragile_detect(image):
        if image.size == (333, 390):
            raise RuntimeError("simulated failure inside the detector")
        return real_detect(image)

    monkeypatch.setattr(detect, "detect_faces", fragile_detect)
    out = tmp_path / "dataset"
    # the good files are versions of one photograph, standing in for several
    result = prepare(messy_folder, out, PrepConfig(token="zwx", class_word="woman", **STAND_INS))
    assert result.enough
    report = json.loads((out / "report.json").read_text())
    decisions = {e["source"]: (e["status"], e["reasons"]) for e in report["photos"]}
    assert decisions == MESSY_EXPECTED
    messages = {e["source"]: e.get("message", "") for e in report["photos"]}
    assert "MP" in messages["huge.png"] and "simulated failure" in messages["broken_by_a_bug.jpg"]
    assert report["summary"]["ignored_files"] == ["notes.txt"]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and all(row["text"].startswith("a photo of zwx woman") for row in rows)
    assert "trip_IMG_0001.png" in {row["file_name"] for row in rows}
    for row in rows:
        assert Image.open(out / row["file_name"]).size == (512, 512)
    assert "9 of 14 photos are usable" in result.message


def test_too_few_photos_exit_non_zero_with_one_sentence(samples_dir, faceless_photo, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("hopper.jpg", "hopper_blurry.jpg"):
        shutil.copy(samples_dir / name, photos / name)
    shutil.copy(faceless_photo, photos / "coffee.jpg")
    out = tmp_path / "dataset"
    out.mkdir()
    # a previous run's image that this run does not accept must not stay in the dataset
    (out / "old_photo.png").write_bytes(b"old")
    (out / "metadata.jsonl").write_text('{"file_name": "old_photo.png", "text": "a photo of sks person"}\n')
    (out / "report.json").write_text('{"summary": {}, "photos": []}')  # written by that earlier prep
    status = cli.main(["prep", str(photos), "--out", str(out)])
    assert status == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("Only 1 of 3 photos is usable") and "add 4 or more" in error[-1]
    assert not (out / "old_photo.png").exists() and (out / "hopper.png").exists()
    assert json.loads((out / "report.json").read_text())["summary"]["enough_to_train"] is False


def test_unusable_folders_and_settings_raise(tmp_path):
    with pytest.raises(PortraitkitError, match="not a folder"):
        prepare(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PortraitkitError, match="No photos"):
        prepare(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(PortraitkitError, match="resolution"):
        prepare(tmp_path / "empty", tmp_path / "out", PrepConfig(resolution=500))
    assert cli.main(["prep", str(tmp_path / "empty"), "--out", str(tmp_path / "empty")]) == 2


def test_awkward_names_and_output_folders(tmp_path, samples_dir):
    photos = tmp_path / "work" / "photos"
    photos.mkdir(parents=True)
    shutil.copy(samples_dir / "hopper.jpg", photos / "hopper.jpg")
    # a name that is not UTF-8 (an old camera's, or unpacked from a Windows zip)
    shutil.copy(samples_dir / "hopper_soft.jpg", photos / os.fsdecode(b"caf\xe9.jpg"))
    report = json.loads((prepare(photos, tmp_path / "dataset", PrepConfig(**STAND_INS)).out_dir / "report.json").read_text(encoding="utf-8"))
    assert {e["source"] for e in report["photos"]} == {"hopper.jpg", "caf\ufffd.jpg"}
    assert all(e["status"] == "accepted" for e in report["photos"])

    (tmp_path / "file.txt").write_text("not a folder")
    with pytest.raises(PortraitkitError, match="is a file"):
        prepare(photos, tmp_path / "file.txt")
    # a folder of the user's own things (here: the one holding the photos) is never written into
    with pytest.raises(PortraitkitError, match="did not write"):
        prepare(photos, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["photos"]
    prepare(photos, tmp_path / "dataset")  # prep's own folder from before: replaced, fine


def test_a_face_at_the_photos_edge_is_kept_with_a_warning(tmp_path, samples_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    hopper = Image.open(samples_dir / "hopper.jpg")
    # the forehead cut off by the top of a tall frame: the square cannot be centred on the face
    tall = Image.new("RGB", (3 * hopper.width, 3 * hopper.height), (120, 130, 140))
    tall.paste(hopper.crop((0, 140, hopper.width, hopper.height)), (hopper.width, 0))
    tall.save(photos / "edge.jpg", quality=95)
    [entry] = prepare(photos, tmp_path / "dataset", PrepConfig(resolution=256)).entries
    assert entry["status"] == "accepted" and "off_centre" in entry["warnings"]
    assert entry["measurements"]["crop"]["off_centre"] > PrepConfig().max_off_centre


def test_every_accepted_crop_has_a_mask_of_its_face_and_hair(samples_run):
    import numpy as np
    from PIL import Image
    from scipy.ndimage import distance_transform_edt

    from portraitkit.faces.detect import detect_faces

    _, out, report = samples_run
    accepted = [e for e in report["photos"] if e["status"] == "accepted"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(e["output"] for e in accepted)
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(row["mask_file_name"] == f"masks/{row['file_name']}" for row in rows)
    for entry in accepted:
        mask = np.asarray(Image.open(out / "masks" / entry["output"])) > 127
        crop = Image.open(out / entry["output"]).convert("RGB")
        assert mask.shape == (512, 512)
        # the face and not the whole frame: every landmark of the face dlib finds again in the crop
        # lies inside (give or take 2% of the face width: dlib's landmarks move a few pixels
        # between the photo and its crop), the bottom corners (shoulders) and top corners outside
        landmarks = detect_faces(crop)[0].landmarks.round().astype(int).clip(0, 511)
        outside = distance_transform_edt(~mask)[landmarks[:, 1], landmarks[:, 0]]
        assert outside.max() <= 0.02 * np.ptp(landmarks[:, 0]), entry["output"]
        assert not mask[-5:, :40].any() and not mask[-5:, -40:].any() and not mask[:40, :40].any()
        # hair: it reaches above the brows by most of a brow-to-chin height
        brows, chin = landmarks[17:27, 1].mean(), landmarks[8, 1]
        top = np.argmax(mask.any(axis=1))
        assert top <= max(0, brows - 0.6 * (chin - brows)), entry["output"]  # or it reaches the top edge
        assert 0.15 < entry["measurements"]["mask"]["coverage"] < 0.5
    # the contact sheet shows the masks: blue-tinted pixels on the accepted photos' thumbnails
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB")).astype(int)
    blue = (sheet[..., 2] - sheet[..., 0] > 60) & (sheet[..., 2] > 150)
    assert blue.sum() > 9 * 2000
