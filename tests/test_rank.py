"""Ranking on real photos: likeness first, quality next, no face last; the training-step record."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from portraitkit.cli import main
from portraitkit.rank import rank_images, score_validation_step

# Photos of Grace Hopper that stand in for the prepared dataset (prep's own output is tested by
# test_prep; any folder of the person's photos is a valid reference).
REFERENCE = ["hopper_warm_closeup.jpg", "hopper_tilted_bright.jpg", "hopper_mirrored_dim.webp"]


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory, samples_dir):
    folder = tmp_path_factory.mktemp("reference")
    for name in REFERENCE:
        shutil.copy(samples_dir / name, folder / name)
    return folder


@pytest.fixture()
def images_dir(tmp_path, samples_dir):
    for name in ["coffee.jpg", "astronaut.jpg", "hopper_blurry.jpg", "hopper.jpg"]:
        shutil.copy(samples_dir / name, tmp_path / name)
    return tmp_path


def test_same_person_first_different_person_next_no_face_last(images_dir, reference_dir, capsys):
    (images_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["pick", str(images_dir), "--reference", str(reference_dir), "--top", "3"]) == 0
    assert "#1" in capsys.readouterr().out
    ranking = json.loads((images_dir / "ranking.json").read_text())
    files = [row["file"] for row in ranking]
    assert files[:3] == ["hopper.jpg", "hopper_blurry.jpg", "astronaut.jpg"]
    assert set(files[3:]) == {"broken.jpg", "coffee.jpg"}
    assert [row["rank"] for row in ranking] == [1, 2, 3, 4, 5]
    for row in ranking:
        assert {"file", "rank", "identity_distance", "score", "faces", "blur", "exposure", "mean_luma", "reasons"} <= row.keys()

    hopper, blurry, astronaut = ranking[:3]
    assert hopper["identity_distance"] < 0.6 and hopper["reasons"] == [] and hopper["faces"] == 1
    assert blurry["identity_distance"] < 0.6 and blurry["blur"] > 0.5 and "blurry face" in blurry["reasons"][0]
    # The mission patch on the suit is a weak detection: not counted as a second face.
    assert astronaut["identity_distance"] > 0.6 and astronaut["faces"] == 1 and "someone else" in astronaut["reasons"][0]
    assert hopper["score"] > blurry["score"] > astronaut["score"]
    coffee = next(row for row in ranking if row["file"] == "coffee.jpg")
    assert coffee["identity_distance"] is None and coffee["score"] == 0.0 and coffee["reasons"] == ["no face found"]
    broken = next(row for row in ranking if row["file"] == "broken.jpg")
    assert broken["reasons"][0].startswith("unreadable")

    assert Image.open(images_dir / "picks.png").size == (3 * 300, 300)  # the top 3, with captions


def test_manifest_chooses_the_images_and_lends_its_style(images_dir, reference_dir):
    manifest = [{"file": "astronaut.jpg", "style": "studio", "seed": 3}, {"file": "hopper.jpg", "style": "city", "seed": 4},
                {"file": "deleted.png", "style": "city", "seed": 5}]
    (images_dir / "manifest.json").write_text(json.dumps(manifest))
    ranking = rank_images(images_dir, reference_dir, top=8)
    assert [(row["file"], row["style"], row["seed"]) for row in ranking] == [("hopper.jpg", "city", 4), ("astronaut.jpg", "studio", 3)]
    assert Image.open(images_dir / "picks.png").size == (2 * 300, 300)


def test_pick_errors_are_clear(tmp_path, reference_dir, samples_dir, capsys):
    assert main(["pick", str(tmp_path), "--reference", str(reference_dir)]) == 2
    assert "holds no images" in capsys.readouterr().err
    shutil.copy(samples_dir / "coffee.jpg", tmp_path / "coffee.jpg")
    assert main(["pick", str(tmp_path), "--reference", str(tmp_path)]) == 2
    assert "no face was found in the reference images" in capsys.readouterr().err


def test_training_steps_are_scored_and_the_best_lora_kept(tmp_path, samples_dir):
    def photos(*names):
        return [Image.open(samples_dir / name).convert("RGB") for name in names]

    reference = photos(*REFERENCE)
    saved = []

    def save_best(folder):
        saved.append(folder.name)
        (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")

    # Step 10 draws someone else, step 20 draws the person, step 30 draws no face at all.
    score_validation_step(tmp_path, 10, photos("astronaut.jpg", "hopper_soft.jpg"), reference, 30, save_best)
    score_validation_step(tmp_path, 20, photos("hopper.jpg", "hopper_greyscale.png"), reference, 30, save_best)
    record = score_validation_step(tmp_path, 30, photos("coffee.jpg", "coffee.jpg"), reference, 30, save_best)

    assert saved == ["best", "best"]  # step 10 was the best at first, then step 20
    steps = {row["step"]: row for row in record["steps"]}
    assert steps[20]["mean_identity_distance"] < steps[10]["mean_identity_distance"]
    assert steps[30]["mean_identity_distance"] is None and steps[30]["reason"] == "no face was found in the 2 validation images"
    assert record["best_step"] == 20 and record["best_lora"] == "best/pytorch_lora_weights.safetensors"
    assert record["final_lora"] == "pytorch_lora_weights.safetensors" and record["recommended"] == "best"
    assert (tmp_path / "best" / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((tmp_path / "identity.json").read_text()) == record


def test_without_reference_faces_nothing_is_invented(tmp_path, samples_dir):
    noise = [Image.effect_noise((64, 64), 60).convert("RGB") for _ in range(2)]
    record = score_validation_step(tmp_path, 5, noise, noise, 5, save_best=lambda folder: pytest.fail("nothing to keep"))
    assert record["best_step"] is None and record["best_lora"] is None and record["recommended"] == "final"
    assert record["steps"][0]["mean_identity_distance"] is None
    assert "no face was found in the 2 training images" in record["reason"]
