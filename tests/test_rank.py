"""Ranking on real photos: likeness first, quality next, no face last; the training-step record."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from portraitkit.cli import main
from portraitkit.pick.likeness import rank_images
from portraitkit.train.validate import score_validation_step

# Photos of Grace Hopper that stand in for the prepared dataset (prep's own output is tested by
# test_prep; any folder of the person's photos is a valid reference).
REFERENCE = ["hopper_warm_closeup.jpg", "hopper_tilted_bright.jpg", "hopper_mirrored_dim.webp"]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, samples_dir):
    folder = tmp_path_factory.mktemp("reference")
    for name in REFERENCE:
        shutil.copy(samples_dir / name, folder / name)
    return folder


def new_scene(samples_dir, name: str) -> Image.Image:
    """The person's head and shoulders from a sample, at 70%, in another scene: a portrait that is
    her but no copy of a training photo (every sample of her is one photograph: copies, test_copies)."""
    person = Image.open(samples_dir / name).convert("RGB")
    scene = Image.open(samples_dir / "coffee.jpg").convert("RGB").resize((512, 512))
    head = person.crop((90, 40, 470, 560)).resize((266, 364))
    scene.paste(head, (230, 148))
    return scene


@pytest.fixture()
def images_dir(tmp_path, samples_dir):
    for name in ["coffee.jpg", "astronaut.jpg"]:
        shutil.copy(samples_dir / name, tmp_path / name)
    new_scene(samples_dir, "hopper.jpg").save(tmp_path / "hopper.jpg", quality=95)
    new_scene(samples_dir, "hopper_blurry.jpg").save(tmp_path / "hopper_blurry.jpg", quality=95)
    return tmp_path


def test_same_person_first_different_person_next_no_face_last(images_dir, reference_dir, capsys):
    """Likeness and quality ranked (the copy check aside: every picture of her here is her one
    photograph, see the next test)."""
    from portraitkit.pick.likeness import IdentityScorer

    scorer = IdentityScorer.from_folder(reference_dir)
    scorer.copies = None
    (images_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ranking = rank_images(images_dir, reference_dir, top=3, scorer=scorer)
    files = [row["file"] for row in ranking]
    assert files[:3] == ["hopper.jpg", "hopper_blurry.jpg", "astronaut.jpg"]
    assert set(files[3:]) == {"broken.jpg", "coffee.jpg"}
    assert [row["rank"] for row in ranking] == [1, 2, 3, 4, 5]
    for row in ranking:
        assert {"file", "rank", "identity_distance", "likeness", "score", "faces", "blur", "exposure", "mean_luma", "reasons",
                "copies"} <= row.keys()

    hopper, blurry, astronaut = ranking[:3]
    # the reference is one photograph, and her "new scenes" are cut from it: never someone else
    assert hopper["likeness"] in ("copying", "you", "unsure") and len(hopper["reasons"]) == 1 and hopper["faces"] == 1
    assert blurry["likeness"] in ("copying", "you", "unsure") and blurry["blur"] > 0.5 and "blurry face" in blurry["reasons"][1]
    # The mission patch on the suit is a weak detection: not counted as a second face.
    assert astronaut["likeness"] == "someone else" and astronaut["faces"] == 1 and "someone else" in astronaut["reasons"][0]
    assert hopper["score"] > blurry["score"] > astronaut["score"]
    coffee = next(row for row in ranking if row["file"] == "coffee.jpg")
    assert coffee["identity_distance"] is None and coffee["score"] == 0.0 and coffee["reasons"] == ["no face found"]
    broken = next(row for row in ranking if row["file"] == "broken.jpg")
    assert broken["reasons"][0].startswith("unreadable")
    assert Image.open(images_dir / "picks.png").size == (3 * 300, 300)  # the top 3, with captions


def test_a_copy_ranks_below_every_portrait_of_the_person_that_is_not_one(images_dir, reference_dir, capsys):
    """Her head and shoulders cut from her photograph into a new scene is that photograph given
    back: named, and ranked below her blurred new scene that is no copy, above someone else; the
    command's last line says where each landed."""
    assert main(["pick", str(images_dir), "--reference", str(reference_dir), "--top", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    ranking = json.loads((images_dir / "ranking.json").read_text())
    rows = {row["file"]: row for row in ranking}
    assert rows["hopper.jpg"]["copies"] in REFERENCE and rows["hopper.jpg"]["likeness"] in ("you", "copying")
    assert rows["hopper_blurry.jpg"]["copies"] is None and rows["astronaut.jpg"]["copies"] is None
    assert rows["hopper_blurry.jpg"]["rank"] < rows["hopper.jpg"]["rank"] < rows["astronaut.jpg"]["rank"]
    band = " ".join(" ".join(out).split("Ranking of 4 images")[1].split()[1:])  # what follows the ranking, its lines joined
    assert "0 of 4 look like you" in band and "copy a training photo" in band and band.endswith("other people beyond 0.60.")
    assert max(len(line) for line in out if not line.startswith("Ranking of")) <= 100  # wrapped at words (paths are not)


def test_manifest_chooses_the_images_and_lends_its_style(images_dir, reference_dir):
    manifest = [{"file": "astronaut.jpg", "style": "studio", "seed": 3}, {"file": "hopper.jpg", "style": "city", "seed": 4},
                {"file": "deleted.png", "style": "city", "seed": 5}]
    (images_dir / "manifest.json").write_text(json.dumps(manifest))
    ranking = rank_images(images_dir, reference_dir, top=8)
    assert [(row["file"], row["style"], row["seed"]) for row in ranking] == [("hopper.jpg", "city", 4), ("astronaut.jpg", "studio", 3)]
    assert Image.open(images_dir / "picks.png").size == (2 * 300, 300)


def test_pick_errors_are_clear(tmp_path, reference_dir, faceless_photo, capsys):
    assert main(["pick", str(tmp_path), "--reference", str(reference_dir)]) == 2
    assert "holds no images" in capsys.readouterr().err
    shutil.copy(faceless_photo, tmp_path / "coffee.jpg")
    assert main(["pick", str(tmp_path), "--reference", str(tmp_path)]) == 2
    assert "no face was found in the reference images" in capsys.readouterr().err


def test_training_steps_are_scored_on_the_one_scale_and_copies_never_kept(tmp_path, samples_dir, faceless_photo):
    """The samples hold one photograph of the person, so every render of her here is a copy of a
    training photo: never kept as best/. (Real people's other shots as renders: tests/test_judge.py.)"""
    def photos(*names):
        return [Image.open(faceless_photo if name == "coffee.jpg" else samples_dir / name).convert("RGB") for name in names]

    reference = photos(*REFERENCE)
    saved = []

    def save_best(folder):
        saved.append(folder.name)

    # Step 10 draws someone else, step 20 gives back the person's photograph, step 30 draws no face at all.
    score_validation_step(tmp_path, 10, photos("astronaut.jpg", "astronaut.jpg"), reference, 30, save_best)
    score_validation_step(tmp_path, 20, photos("hopper.jpg", "hopper_greyscale.png"), reference, 30, save_best)
    record = score_validation_step(tmp_path, 30, photos("coffee.jpg", "coffee.jpg"), reference, 30, save_best)

    assert saved == [] and record["best_step"] is None and record["recommended"] == "final"
    steps = {row["step"]: row for row in record["steps"]}
    assert steps[20]["likeness"] < steps[10]["likeness"]
    assert steps[10]["in_band"] == 0 and steps[10]["likeness"] > record["band"]["someone_else_beyond"]
    assert steps[20]["copies"] == 2 and steps[20]["reason"].startswith("copies_training_photo")
    assert steps[30]["likeness"] is None and steps[30]["reason"] == "no face was found in the 2 validation images"

    # identity.json's likeness, recomputed from dlib's embeddings directly: per image, the distance
    # of its largest face to the centre (mean embedding) of the reference faces; per step, the mean
    # over its images; `nearest`, the distance to the closest reference face
    from portraitkit.faces.detect import detect_faces, face_embedding

    def embedding(image):
        return face_embedding(image, detect_faces(image)[0])

    references = np.array([embedding(image) for image in reference])
    centre = references.mean(axis=0)

    def mean_distance(*names):
        return np.mean([np.linalg.norm(embedding(image) - centre) for image in photos(*names)])

    def nearest(*names):
        return np.mean([np.linalg.norm(references - embedding(image), axis=1).min() for image in photos(*names)])

    written = json.loads((tmp_path / "identity.json").read_text())
    assert written["reference_faces"] == len(REFERENCE)
    rows = {row["step"]: row for row in written["steps"]}
    assert rows[10]["likeness"] == pytest.approx(mean_distance("astronaut.jpg", "astronaut.jpg"), abs=1e-4)
    assert rows[20]["likeness"] == pytest.approx(mean_distance("hopper.jpg", "hopper_greyscale.png"), abs=1e-4)
    assert rows[20]["nearest"] == pytest.approx(nearest("hopper.jpg", "hopper_greyscale.png"), abs=1e-4)


def test_without_reference_faces_nothing_is_invented(tmp_path, samples_dir):
    noise = [Image.effect_noise((64, 64), 60).convert("RGB") for _ in range(2)]
    record = score_validation_step(tmp_path, 5, noise, noise, 5, save_best=lambda folder: pytest.fail("nothing to keep"))
    assert record["best_step"] is None and record["best_lora"] is None and record["recommended"] == "final"
    assert record["steps"][0]["likeness"] is None
    assert "no face was found in the 2 training images" in record["reason"]


def test_missing_face_models_leave_the_step_unscored_not_the_run_broken(tmp_path, samples_dir, monkeypatch):
    import portraitkit.faces.detect
    from portraitkit.core.errors import PortraitkitError
    from portraitkit.faces.photos import PixelMemo

    def missing():
        raise PortraitkitError("The face models are missing: run `pip install face_recognition_models`")

    monkeypatch.setattr(portraitkit.faces.detect, "_shape_predictor", missing)
    monkeypatch.setattr(portraitkit.faces.detect, "_FOUND", PixelMemo(1))  # nothing found before counts
    noise = Image.effect_noise((96, 96), 60).convert("RGB")
    assert portraitkit.faces.detect.detect_faces(noise) == []  # no face: the landmark model is never needed
    # a flipped copy: not in the embeddings' memo, so its face needs the (missing) landmark model
    reference = [Image.open(samples_dir / "hopper.jpg").convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)]
    record = score_validation_step(tmp_path, 5, [noise], reference, 5, save_best=lambda folder: pytest.fail("unscored"))
    [row] = record["steps"]
    assert row["reason"].startswith("identity not scored: The face models are missing")
    assert row["likeness"] is None and record["best_step"] is None and record["recommended"] == "final"


def test_exposure_is_judged_as_prep_judges_it(tmp_path, reference_dir, samples_dir):
    from portraitkit.teach import degrade
    from portraitkit.faces.photos import open_photo

    # 1.8 stops under: mean face brightness 0.24 with 13% of the face at black, which prep
    # accepts (as it accepts well-exposed very dark skin, 0.2-0.3): no exposure mark-down here.
    degrade.change_exposure(open_photo(samples_dir / "hopper.jpg"), -1.8).save(tmp_path / "dim.png")
    degrade.change_exposure(open_photo(samples_dir / "hopper.jpg"), -3.0).save(tmp_path / "night.png")
    ranking = {row["file"]: row for row in rank_images(tmp_path, reference_dir)}
    assert 0.2 < ranking["dim.png"]["mean_luma"] < 0.25 and len(ranking["dim.png"]["reasons"]) == 2  # its zone, and
    assert ranking["dim.png"]["reasons"][1].startswith("copies_training_photo")  # an edit of the reference photograph
    assert any("crushed to black" in reason or "too dark" in reason for reason in ranking["night.png"]["reasons"])


def test_picks_sheet_shows_phone_photos_upright(tmp_path, reference_dir, samples_dir):
    from portraitkit.faces.photos import open_photo
    from portraitkit.pick.report import picks_sheet

    sideways, upright = tmp_path / "sideways", tmp_path / "upright"
    sideways.mkdir(), upright.mkdir()
    shutil.copy(samples_dir / "hopper_phone_sideways.jpg", sideways / "phone.jpg")  # EXIF orientation 6
    open_photo(samples_dir / "hopper_phone_sideways.jpg").save(upright / "phone.jpg", quality=100)
    row = {"file": "phone.jpg", "rank": 1, "score": 0.9, "identity_distance": 0.2}
    turned, straight = (np.asarray(picks_sheet(folder, [row]), dtype=float) for folder in (sideways, upright))
    assert np.abs(turned - straight).mean() < 2  # the same picture, give or take JPEG re-saving


def test_the_picks_sheet_marks_a_copy_of_a_training_photo_whatever_its_zone(tmp_path, samples_dir):
    """A portrait that gives a training photo back reads "a copy" in red on the sheet (and in the
    picks panel, which shows the same label), not "you"."""
    from portraitkit.pick.report import CAPTION, CELL, likeness_label, picks_sheet

    shutil.copy(samples_dir / "hopper.jpg", tmp_path / "portrait.jpg")
    row = {"file": "portrait.jpg", "rank": 1, "score": 0.4, "identity_distance": 0.3, "likeness": "you"}

    def red_in_caption(**extra) -> int:
        caption = np.asarray(picks_sheet(tmp_path, [{**row, **extra}]), dtype=int)[CELL - CAPTION:CELL]
        return int(((caption[..., 0] > 120) & (caption[..., 1] < 80)).sum())

    assert red_in_caption(copies="hopper.png") > 50 and red_in_caption() == 0
    assert likeness_label({**row, "copies": "hopper.png"}) == "likeness 0.30 (a copy)" and likeness_label(row).endswith("(you)")
