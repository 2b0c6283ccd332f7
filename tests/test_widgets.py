"""The notebook panels, driven from Python as a learner's clicks would drive them; effects on files."""

from __future__ import annotations

import datetime
import json
import zipfile
from pathlib import Path

import pytest

from portraitkit.core.errors import PortraitkitError
from portraitkit.widgets.photos import OverridePanel, UploadPanel, uploaded_files
from portraitkit.widgets.picks import PicksPanel
from portraitkit.widgets.sampling import StylePanel
from portraitkit.widgets.training import LossMonitor, TrainPanel
from test_export import make_portraits  # tests/ is on sys.path (pytest's default import mode)

NOW = datetime.datetime.now(datetime.timezone.utc)
GREEN = "#1a7f37"  # panel.say's colour for all is well


@pytest.fixture(autouse=True)
def no_output_widgets(monkeypatch):
    """No panel may hold an `ipywidgets.Output`: in the classic Notebook with ipywidgets 7.7.1 and
    widgetsnbextension 3.6.7-3.6.10 (what pip pairs with 7.7.1 today) its front end cannot create
    one, and the whole panel around it stays blank (README, "Widgets in the classic Notebook")."""
    import ipywidgets

    def refuse(*args, **kwargs):
        raise AssertionError("a panel made an ipywidgets.Output: draw into an Image or HTML widget instead")

    monkeypatch.setattr(ipywidgets.Output, "__init__", refuse)


def test_upload_value_of_ipywidgets_7_and_8(tmp_path, portrait_path):
    content = portrait_path.read_bytes()
    v7 = {"me.jpg": {"metadata": {"name": "me.jpg", "type": "image/jpeg", "size": len(content), "lastModified": 0},
                     "content": content}}
    v8 = ({"name": "me.jpg", "type": "image/jpeg", "size": len(content), "content": memoryview(content),
           "last_modified": NOW},)
    assert uploaded_files(v7) == uploaded_files(v8) == [("me.jpg", content)]
    assert uploaded_files(()) == uploaded_files({}) == []


def browser_upload(upload, files: dict[str, bytes]) -> None:
    """What the browser side of a FileUpload sends when files are chosen, in ipywidgets 7 or 8."""
    import ipywidgets

    if ipywidgets.__version__.startswith("7."):  # Colab: metadata and data lists, then a counter bump
        upload.metadata = [{"name": name, "type": "image/jpeg", "size": len(data), "lastModified": 0} for name, data in files.items()]
        upload.data = list(files.values())
        upload._counter += 1
    else:
        upload.value = tuple({"name": name, "type": "image/jpeg", "size": len(data), "content": memoryview(data),
                              "last_modified": NOW} for name, data in files.items())


def test_upload_panel_saves_photos_and_names_the_empty_ones(tmp_path, portrait_path):
    panel = UploadPanel(tmp_path / "photos")
    assert "0 photos in" in panel.status.value and "Add photos" in panel.status.value  # the count is the panel's own
    assert GREEN not in panel.status.value  # nothing to prepare yet is not good news
    content = portrait_path.read_bytes()
    browser_upload(panel.upload, {"me.jpg": content, "big.jpg": b""})
    assert (tmp_path / "photos" / "me.jpg").read_bytes() == content
    assert not (tmp_path / "photos" / "big.jpg").exists()
    assert "1 photos in" in panel.status.value and "big.jpg arrived empty" in panel.status.value


def test_the_samples_button_fills_an_empty_folder_for_a_learner_without_photos(tmp_path, samples_dir):
    from portraitkit.colab import list_photos

    panel = UploadPanel(tmp_path / "photos")
    panel.samples.click()
    copied = [p.name for p in list_photos(tmp_path / "photos")]
    assert copied == [p.name for p in list_photos(samples_dir)] and len(copied) == 17
    assert f"{len(copied)} photos in" in panel.status.value and GREEN in panel.status.value
    panel.samples.click()  # again: nothing doubles
    assert [p.name for p in list_photos(tmp_path / "photos")] == copied


def test_without_the_repository_the_samples_button_says_where_they_are(tmp_path, monkeypatch):
    import portraitkit.demo

    monkeypatch.setattr(portraitkit.demo, "SAMPLES", tmp_path / "not-here")  # a pip install, outside Colab
    panel = UploadPanel(tmp_path / "photos")
    panel.samples.click()
    assert "clone https://github.com/portraitkit/portraitkit" in panel.status.value and GREEN not in panel.status.value


def test_picks_panel_ticks_are_saved_and_export_writes_the_zip(tmp_path):
    images = make_portraits(tmp_path / "portraits")
    drive = tmp_path / "drive" / "picks"
    panel = PicksPanel(images, tmp_path / "my_picks.zip", copy_to=drive)
    assert list(panel.checkboxes) == ["studio_0.png", "studio_1.png", "outdoor_0.png"]  # best first
    labels = [card.children[1].value for card in panel.widget.children[0].children]
    assert "no face found" in labels[2]  # the unranked one says why
    assert all(name in label for name, label in zip(panel.checkboxes, labels))  # each card names its file

    panel.export_button.click()  # nothing picked yet: said in the panel, nothing written
    assert "tick at least one" in panel.status.value and not (tmp_path / "my_picks.zip").exists()

    panel.checkboxes["studio_1.png"].value = True
    panel.checkboxes["studio_0.png"].value = True
    assert json.loads((images / "picks.json").read_text()) == ["studio_0.png", "studio_1.png"]
    panel.checkboxes["studio_1.png"].value = False
    assert json.loads((images / "picks.json").read_text()) == ["studio_0.png"]

    panel.export_button.click()
    with zipfile.ZipFile(tmp_path / "my_picks.zip") as archive:
        assert set(archive.namelist()) == {"portraits/studio_0.png", "recipes.json", "recipes.txt"}
        assert json.loads(archive.read("recipes.json"))[0]["seed"] == 0
    assert (drive / "studio_0.png").is_file()
    assert "1 portraits" in panel.status.value and str(drive) in panel.status.value

    # after a disconnect, a new panel starts from the saved picks
    again = PicksPanel(images, tmp_path / "my_picks.zip")
    assert again.picked == ["studio_0.png"]


def test_picks_panel_needs_a_ranking(tmp_path):
    with pytest.raises(PortraitkitError, match="portraitkit pick"):
        PicksPanel(tmp_path, tmp_path / "picks.zip")


def test_loss_monitor_shows_progress_and_the_run_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    monitor = LossMonitor(run, total_steps=3, every_seconds=3600)
    assert monitor.image.layout.display == "none"  # no broken-image icon before the first curve
    drawn = []
    for step in (1, 2, 3):  # train() appends each row to train_log.jsonl, then calls on_step
        row = {"step": step, "loss": 1.0 / step, "lr": 1e-4, "seconds": 0.5}
        with (run / "train_log.jsonl").open("a") as log:
            log.write(json.dumps(row) + "\n")
        monitor(row)
        drawn.append(bytes(monitor.image.value))  # ipywidgets 8 holds a memoryview
    assert drawn[0][:8] == b"\x89PNG\r\n\x1a\n" and monitor.image.layout.display is None  # the first step shows a curve at once
    assert drawn[1] == drawn[0] != drawn[2]  # then not more often than asked, but always at the end
    assert (run / "loss.png").read_bytes() == drawn[2]
    assert "step 3/3" in monitor.status.value
    assert bytes(LossMonitor(run, total_steps=6).image.value) == drawn[2]  # a resumed run shows it at once


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, samples_dir):
    """data/samples prepared once at 128 px (a few seconds); each test works on its own copy."""
    from portraitkit.prep import PrepConfig, prepare

    out = tmp_path_factory.mktemp("prepared") / "dataset"
    prepare(samples_dir, out, PrepConfig(resolution=128, one_per_photograph=False))
    return out


@pytest.fixture
def dataset(prepared, tmp_path):
    import shutil

    return Path(shutil.copytree(prepared, tmp_path / "dataset"))


def metadata_files(dataset):
    return [json.loads(line)["file_name"] for line in (dataset / "metadata.jsonl").read_text().splitlines()]


def load_imagefolder(dataset):
    from datasets import load_dataset

    return load_dataset("imagefolder", data_dir=str(dataset), split="train")


def test_override_leaves_out_an_accepted_photo_and_brings_it_back(dataset, samples_dir):
    panel = OverridePanel(dataset, samples_dir)
    before = metadata_files(dataset)
    assert panel.toggles["hopper_soft.jpg"].value and "hopper_soft.png" in before

    panel.toggles["hopper_soft.jpg"].value = False
    assert metadata_files(dataset) == [name for name in before if name != "hopper_soft.png"]
    assert not (dataset / "hopper_soft.png").exists() and not (dataset / "masks" / "hopper_soft.png").exists()
    report = json.loads((dataset / "report.json").read_text())
    entry = next(e for e in report["photos"] if e["source"] == "hopper_soft.jpg")
    assert entry["status"] == "rejected" and entry["override"] and entry["output"] is None
    assert report["summary"]["accepted"] == len(before) - 1
    assert len(load_imagefolder(dataset)) == len(before) - 1  # what training will read
    assert "left out" in panel.toggles["hopper_soft.jpg"].description and "by you" in panel.labels["hopper_soft.jpg"].value

    panel.toggles["hopper_soft.jpg"].value = True
    assert sorted(metadata_files(dataset)) == sorted(before) and (dataset / "hopper_soft.png").is_file()
    assert (dataset / "masks" / "hopper_soft.png").is_file() and "mask" in load_imagefolder(dataset).column_names


def test_override_uses_a_rejected_photo_cropped_like_prep(dataset, samples_dir):
    from PIL import Image

    panel = OverridePanel(dataset, samples_dir)
    assert not panel.toggles["hopper_blurry.jpg"].value
    panel.toggles["hopper_blurry.jpg"].value = True

    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    added = next(row for row in rows if row["file_name"] == "hopper_blurry.png")
    assert added["text"] == "a photo of sks person"
    assert Image.open(dataset / "hopper_blurry.png").size == (128, 128)
    assert added["mask_file_name"] == "masks/hopper_blurry.png"  # masked as prep masks
    assert Image.open(dataset / "masks" / "hopper_blurry.png").size == (128, 128)
    entry = next(e for e in json.loads((dataset / "report.json").read_text())["photos"] if e["source"] == "hopper_blurry.jpg")
    assert entry["status"] == "accepted" and entry["reasons"] == ["blurry"]  # prep's measurement is kept
    assert len(load_imagefolder(dataset)) == len(rows) == 11
    assert "11 photos will be used" in panel.status.value


def test_override_cannot_use_a_photo_without_a_face(dataset, samples_dir):
    panel = OverridePanel(dataset, samples_dir)
    assert panel.toggles["coffee.jpg"].disabled  # nothing to crop: the toggle is off limits
    before = (dataset / "metadata.jsonl").read_text()
    panel.toggles["coffee.jpg"].value = True  # even when driven from code
    assert not panel.toggles["coffee.jpg"].value and "no face found" in panel.status.value
    assert (dataset / "metadata.jsonl").read_text() == before


def test_style_panel_turns_the_choice_into_a_sample_config(prepared, tmp_path):
    from portraitkit.core.files import write_json
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.run_folder import run_config

    run = tmp_path / "run"  # config.json exactly as train writes it, without training
    write_json(run / "config.json", run_config(TrainConfig(dataset_dir=str(prepared), out_dir=str(run), base="tiny-sd")))
    panel = StylePanel(run, chosen=["outdoor", "studio"], per_style=2, lora_scale=0.8)
    assert panel.chosen == [name for name in panel.styles if name in ("outdoor", "studio")]
    assert "sks person" in panel.prompt.value and "4 images" in panel.prompt.value

    panel.checkboxes["studio"].value = False
    panel.checkboxes["golden_hour"].value = True
    panel.lora_scale.value = 0.6
    config = panel.config(tmp_path / "portraits", steps=2)
    assert sorted(config.styles) == ["golden_hour", "outdoor"] and config.per_style == 2
    assert config.lora_scale == 0.6 and config.steps == 2 and config.run_dir == str(run)

    # the notebook's own steps and a user's own style reach the panel's text and its config
    from portraitkit.sample.styles import load_styles

    mine = load_styles({"styles": {"my_look": {"description": "mine", "prompt": "{token} {class_word} by a lake"}}})
    custom = StylePanel(run, chosen=["my_look"], styles=mine, steps=3)
    assert "sks person by a lake" in custom.prompt.value and "<b>steps</b> 3" in custom.prompt.value
    assert custom.config(tmp_path / "portraits").steps == 3 and custom.config(tmp_path / "p", steps=5).steps == 5

    for box in panel.checkboxes.values():
        box.value = False
    assert "Tick at least one" in panel.prompt.value
    with pytest.raises(PortraitkitError, match="no style is ticked"):
        panel.config(tmp_path / "portraits")


def test_train_panel_shows_the_cost_and_builds_the_config(prepared, tmp_path):
    from portraitkit.plan.devices import Device

    run = tmp_path / "run"
    panel = TrainPanel(prepared, run, base="tiny-sd", steps=4, rank=4, resolution=64)
    assert "estimated" in panel.estimate.value and "fits" in panel.estimate.value and "GiB" in panel.estimate.value
    assert "Estimates, not measurements" in panel.estimate.value and "noise, not portraits" in panel.estimate.value
    # a 4-step run validates once, at its end (train's own rule): the cost shown is of that one validation
    assert "validation about" in panel.estimate.value and "(1 x 8 images)" in panel.estimate.value
    assert "training starts a new run" in panel.resume.value

    panel.rank.value = 8
    panel.text_encoder.value = True
    panel.optimizer.value = "adamw"
    assert not panel.config().masked_loss
    panel.masked_loss.value = True  # notebook 04's toggle for the masked loss
    config = panel.config(checkpoint_every=2)
    assert (config.base, config.steps, config.rank, config.resolution) == ("tiny-sd", 4, 8, 64)
    assert config.train_text_encoder and config.optimizer == "adamw" and config.checkpoint_every == 2 and config.masked_loss
    assert not config.resume and config.dataset_dir == str(prepared) and config.out_dir == str(run)
    panel.resolution.value = 0
    assert panel.config().resolution is None  # the base's own size

    # after a disconnect the same panel continues the run in the folder
    from portraitkit.core.files import write_json
    from portraitkit.train.run_folder import run_config

    write_json(run / "config.json", run_config(panel.config()))  # the settings the panel shows now
    panel.update()
    assert panel.config().resume and "continues from step 0" in panel.resume.value

    # a machine too small for the run: the panel says so, with the planner's advice
    small = Device("tiny-gpu", gpu_memory_gb=0.2, host_ram_gb=64, sd15_its=6.9, source="a test machine")
    cramped = TrainPanel(prepared, run, base="tiny-sd", steps=4, rank=4, resolution=64, gpu=small)
    assert "does not fit" in cramped.estimate.value


def test_train_panel_plans_the_validation_the_train_cell_runs(prepared, tmp_path):
    """Notebook 04 gives the panel its VALIDATE_EVERY: the estimate counts those validations, and
    the config the train cell runs is the one estimated."""
    default = TrainPanel(prepared, tmp_path / "a", base="tiny-sd", steps=100, rank=4, resolution=64)
    assert "(2 x 8 images)" in default.estimate.value  # train's own rule: every tenth, at least 50 apart
    given = TrainPanel(prepared, tmp_path / "b", base="tiny-sd", steps=100, rank=4, resolution=64,
                       validate_every=25, validation_steps=2, checkpoint_every=40)
    assert "(4 x 8 images)" in given.estimate.value
    config = given.config()
    assert (config.validate_every, config.validation_steps, config.checkpoint_every) == (25, 2, 40)
    assert len(config.validated_steps()) == 4
    never = TrainPanel(prepared, tmp_path / "c", base="tiny-sd", steps=100, rank=4, resolution=64, validate_every=0)
    assert "validation about" not in never.estimate.value
    given.estimate.value = "stale"
    given.masked_loss.value = True  # watched like every other control: the estimate is made again
    assert "estimated" in given.estimate.value and given.config().masked_loss


def test_teaching_figures_draw_the_arithmetic():
    from portraitkit.plan import figures

    texts = " ".join(t.get_text() for t in figures.lora_figure(rank=8, d=640, k=640).axes[0].texts)
    assert "409,600 numbers" in texts and "r·(d+k) = 10,240" in texts and "2.5% of W" in texts

    axes = figures.memory_figure("tiny-sd", rank=4).axes[0]
    heights = {}
    for bar in axes.patches:  # stacked bars: sum each column's parts
        heights[round(bar.get_x(), 2)] = heights.get(round(bar.get_x(), 2), 0) + bar.get_height()
    full_adamw, full_8bit, lora_adamw, lora_8bit = (heights[x] for x in sorted(heights))
    assert full_adamw > full_8bit > lora_adamw > lora_8bit  # 8-bit state saves; a LoRA saves far more


def test_train_panel_never_offers_to_continue_a_run_on_another_base(prepared, tmp_path):
    from portraitkit.core.files import write_json
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.run_folder import run_config

    run = tmp_path / "run"
    write_json(run / "config.json", run_config(TrainConfig(dataset_dir=str(prepared), out_dir=str(run), base="tiny-sd", rank=4)))
    panel = TrainPanel(prepared, run, base="tiny-sd", steps=4, rank=4)
    assert "continues from step 0" in panel.resume.value
    panel.base.value = "tiny-sdxl"
    assert "continues" not in panel.resume.value
    assert "base tiny-sd (now tiny-sdxl)" in panel.resume.value and "RUN_DIR" in panel.resume.value


def test_lens_panel_redraws_its_picture_and_numbers_when_a_slider_moves():
    from portraitkit.widgets.lens import LensPanel

    panel = LensPanel(distance_cm=30.5)
    first, said = bytes(panel.picture.value), panel.numbers.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and "At 30 cm" in said
    panel.distance.value = 150
    assert bytes(panel.picture.value) != first and "At 150 cm" in panel.numbers.value


def test_processing_panel_shows_the_damage_a_slider_adds(portrait_path):
    from PIL import Image

    from portraitkit.widgets.processing import ProcessingPanel

    photo = Image.open(portrait_path).convert("RGB")
    photo.thumbnail((300, 300))
    panel = ProcessingPanel(photo)
    first = bytes(panel.picture.value)
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and "no problems flagged" in panel.flags.value
    panel.sliders["JPEG compression"].value = 1.0
    assert bytes(panel.picture.value) != first and "JPEG blocks" in panel.flags.value
