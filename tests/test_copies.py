"""The copy flag: a training photo given back is caught (the same-photograph detector prep uses) and ranked
below the person in a new scene. Real people's other shots are never copies: tests/test_judge.py."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from portraitkit.pick.likeness import rank_images
from portraitkit.train.validate import score_validation_step

TRAINING = ["hopper.jpg", "hopper_soft.jpg", "hopper_warm_closeup.jpg", "hopper_tilted_bright.jpg", "hopper_mirrored_dim.webp"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, samples_dir):
    from portraitkit.prep import PrepConfig, prepare

    photos = tmp_path_factory.mktemp("photos")
    for name in TRAINING:
        shutil.copy(samples_dir / name, photos / name)
    out = tmp_path_factory.mktemp("dataset") / "dataset"
    assert len(prepare(photos, out, PrepConfig(resolution=256, one_per_photograph=False)).accepted) == len(TRAINING)
    return out


def rerendered(image: Image.Image, shift: int = 1) -> Image.Image:
    """What a LoRA that memorised a photo gives back: the same picture drawn again, not re-saved: re-cropped
    by `shift` pixels on each side, at another size, warmer, and JPEG-encoded at another quality."""
    width, height = image.size
    moved = image.crop((shift, shift, width - shift, height - shift)).resize((384, 384), Image.Resampling.BICUBIC)
    red, green, blue = moved.split()
    warmer = Image.merge("RGB", (red.point(lambda v: min(255, round(v * 1.06))), green, blue.point(lambda v: round(v * 0.94))))
    buffer = io.BytesIO()
    warmer.save(buffer, "JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def composite(dataset, name: str, scene: Image.Image) -> Image.Image:
    """The training crop's face and hair (prep's mask) at 70% of its size, off to one side, in another scene."""
    crop, mask = Image.open(dataset / name).convert("RGB"), Image.open(dataset / "masks" / name)
    box = mask.getbbox()
    size = (round((box[2] - box[0]) * 0.7), round((box[3] - box[1]) * 0.7))
    out = scene.convert("RGB").resize(crop.size)
    out.paste(crop.crop(box).resize(size), (crop.width - size[0] - 8, crop.height - size[1] - 8), mask.crop(box).resize(size))
    return out


def test_a_training_photo_given_back_is_flagged_and_ranked_below_a_new_scene(dataset, samples_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rerendered(Image.open(dataset / "hopper.png")).save(images / "copy.jpg")
    composite(dataset, "hopper.png", Image.open(samples_dir / "coffee.jpg")).save(images / "new_scene.png")
    Image.open(samples_dir / "astronaut.jpg").convert("RGB").crop((120, 0, 376, 256)).save(images / "someone_else.png")

    ranking = rank_images(images, dataset)
    rows = {row["file"]: row for row in ranking}
    copy, new, other = rows["copy.jpg"], rows["new_scene.png"], rows["someone_else.png"]
    assert copy["copies"] == "hopper.png"
    assert any(reason.startswith("copies_training_photo") and "hopper.png" in reason for reason in copy["reasons"])
    assert new["likeness"] != "someone else" and new["copies"] is None  # recognised, and not a copy
    assert abs(copy["identity_distance"] - new["identity_distance"]) < 0.05  # likeness alone cannot tell them apart
    assert new["rank"] < copy["rank"]
    assert other["copies"] is None and not any("copies_training_photo" in r for r in other["reasons"])
    assert json.loads((images / "ranking.json").read_text())[copy["rank"] - 1]["copies"] == "hopper.png"


def test_another_photo_of_the_person_or_another_person_is_no_copy(dataset, samples_dir):
    from portraitkit.pick.copies import TrainingPhotos

    crops = {name: Image.open(dataset / name).convert("RGB") for name in (n.rsplit(".", 1)[0] + ".png" for n in TRAINING)}
    everything = TrainingPhotos(list(crops), list(crops.values()))
    for name, crop in crops.items():  # each re-rendered crop is caught as the copy of its own photo
        copy = everything.copies(rerendered(crop))
        assert copy is not None and copy.photo == name, name
    astronaut = Image.open(samples_dir / "astronaut.jpg").convert("RGB").crop((100, 0, 400, 300)).resize((256, 256))
    assert everything.copies(astronaut) is None


def test_a_copy_reframed_by_a_few_percent_is_still_caught(dataset):
    """A 4 px re-crop of a 256 px training crop, warmer and re-encoded: the copy the SSIM flag missed."""
    from portraitkit.pick.copies import TrainingPhotos

    crop = Image.open(dataset / "hopper.png").convert("RGB")
    photos = TrainingPhotos(["hopper.png"], [crop])
    for shift in (4, 12):
        assert photos.copies(rerendered(crop, shift=shift)) is not None, shift


def test_a_validation_step_that_copies_is_not_chosen_as_best(dataset, samples_dir, tmp_path):
    reference = [Image.open(dataset / f"{name.rsplit('.', 1)[0]}.png").convert("RGB") for name in TRAINING]
    saved = []
    scene = Image.open(samples_dir / "coffee.jpg")
    new_scenes = [composite(dataset, "hopper.png", scene), composite(dataset, "hopper_soft.png", scene)]
    copies = [rerendered(reference[0]), rerendered(reference[1])]
    score_validation_step(tmp_path, 10, new_scenes, reference, 20, lambda folder: saved.append(10))
    record = score_validation_step(tmp_path, 20, copies, reference, 20, lambda folder: saved.append(20))
    steps = {row["step"]: row for row in record["steps"]}
    assert steps[20]["likeness"] < 0.6  # the person, as alike as can be
    assert steps[20]["reason"].startswith("copies_training_photo") and steps[20]["copies"] == 2
    assert steps[10]["copies"] == 0 and record["best_step"] == 10 and saved == [10]
