"""The copy flag: a training photo given back is caught and ranked below the person in a new scene."""

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
    assert new["identity_distance"] < 0.6 and new["copies"] is None  # recognised, and not a copy
    assert abs(copy["identity_distance"] - new["identity_distance"]) < 0.05  # likeness alone cannot tell them apart
    assert new["rank"] < copy["rank"]
    assert other["copies"] is None and not any("copies_training_photo" in r for r in other["reasons"])
    assert json.loads((images / "ranking.json").read_text())[copy["rank"] - 1]["copies"] == "hopper.png"


def test_another_photo_of_the_person_or_another_person_is_no_copy(dataset, samples_dir):
    from portraitkit.faces.detect import detect_faces
    from portraitkit.pick.copies import CopyDetector

    crops = {name: Image.open(dataset / name).convert("RGB") for name in (n.rsplit(".", 1)[0] + ".png" for n in TRAINING)}

    def flagged(detector, image):
        found = detect_faces(image)
        return detector.copies(image, found[0] if found else None)

    everything = CopyDetector(list(crops), list(crops.values()))
    for name, crop in crops.items():  # each re-rendered crop is caught as the copy of its own photo
        copy = flagged(everything, rerendered(crop))
        assert copy is not None and copy.photo == name, name
    # the close-up, held out of the training set: the same person, posed alike, but another picture
    # (of these crops, the one most alike: SSIM 0.78 with the tilted one)
    others = [name for name in crops if name != "hopper_warm_closeup.png"]
    held_out = CopyDetector(others, [crops[name] for name in others])
    assert flagged(held_out, crops["hopper_warm_closeup.png"]) is None
    assert flagged(held_out, rerendered(crops["hopper_warm_closeup.png"])) is None
    astronaut = Image.open(samples_dir / "astronaut.jpg").convert("RGB").crop((100, 0, 400, 300)).resize((256, 256))
    assert flagged(everything, astronaut) is None


@pytest.mark.xfail(strict=True, reason="known limit: a copy re-cropped by 4 px of 256 (and warmer, re-encoded) "
                   "measures SSIM 0.79-0.81 at 64 px, as far from its original as another framing of one photograph (0.78)")
def test_a_copy_reframed_by_a_few_percent_is_still_caught(dataset):
    from portraitkit.faces.detect import detect_faces
    from portraitkit.pick.copies import CopyDetector

    crop = Image.open(dataset / "hopper.png").convert("RGB")
    detector = CopyDetector(["hopper.png"], [crop])
    image = rerendered(crop, shift=4)
    assert detector.copies(image, detect_faces(image)[0]) is not None


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
