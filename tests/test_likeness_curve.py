"""The likeness curve: validation drawn with sample's recipe, each step's renders placed in the
person's band, and best/ chosen by the band among steps that copy nothing (on real photos:
tests/test_judge.py). The tiny base draws noise, not faces: its run proves the mechanics only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from portraitkit.cli import main
from portraitkit.faces.likeness import leave_one_out_spread, likeness_band, likeness_distances, nearest_distances
from portraitkit.train import validate
from portraitkit.train.config import TrainConfig


def test_the_spread_is_each_photo_against_the_centre_of_the_others():
    faces = np.zeros((3, 128))
    faces[1, 0] = faces[2, 1] = 2.0  # (0, 0), (2, 0), (0, 2)
    # (0,0) against (1,1): sqrt 2; (2,0) against (0,1) and (0,2) against (1,0): sqrt 5
    assert leave_one_out_spread(faces) == pytest.approx((math.sqrt(2) + 2 * math.sqrt(5)) / 3)
    assert leave_one_out_spread(faces[:1]) is None  # one photo has nothing to be compared with
    render = np.zeros((1, 128))
    render[0, 0] = 2.0  # a copy of the second photo
    assert nearest_distances(render, faces)[0] == 0
    assert likeness_distances(render, faces)[0] == pytest.approx(math.hypot(2 - 2 / 3, 2 / 3))
    band = likeness_band(faces / 6)  # a real person's spread: about 0.3
    assert band.copying_below < band.you_within < band.someone_else_beyond
    assert [band.zone(d) for d in (0.0, band.you_within, band.someone_else_beyond, band.someone_else_beyond + 0.01)] == [
        "copying", "you", "unsure", "someone else"]
    wide = likeness_band(faces)  # photos further apart than other people begin: no "unsure" left between
    assert wide.someone_else_beyond == wide.you_within


def row(step, in_band, scored=8, copies=0, variety=1.0, likeness=0.4):
    return {"step": step, "renders": 8, "faces": scored, "scored": scored, "likeness": likeness, "in_band": in_band,
            "copies": copies, "variety": variety}


def test_best_is_the_earliest_step_with_the_most_renders_in_the_band_copying_nothing():
    rows = [row(100, 2), row(200, 6), row(300, 8, copies=1),  # the most in the band, but it gives back a photo
            row(400, 7),  # one render more than step 200: near-equal, the earlier step wins
            row(500, 8, scored=3),  # faces judged in fewer than half its renders: cannot be judged
            row(600, 8, variety=0.3),  # all eight in the band, but one look every time: counts half
            row(700, 0, scored=0, likeness=None)]
    assert validate.best_step(rows) == 200
    assert validate.best_step(rows[:1]) == 100
    assert validate.best_step([row(300, 8, copies=1), row(700, 0, scored=0, likeness=None)]) is None
    # nothing in the band: the likeliest step that is not yet someone else; someone else everywhere: none
    early, later = row(100, 0, likeness=0.52), row(200, 0, likeness=0.5)
    assert validate.best_step([{**early, "unsure": 3}, {**later, "unsure": 2}]) == 200
    assert validate.best_step([early, later]) is None


def test_scored_steps_keep_best_and_the_curve(tmp_path, monkeypatch):
    """A scripted sequence through score_validation_step: best/ follows the rule, and identity.json
    and likeness.png carry the curve with the person's band."""
    script = {100: {"faces": 8, "scored": 8, "likeness": 0.50, "nearest": 0.45, "in_band": 3, "copies": 0, "variety": 1.1},
              200: {"faces": 8, "scored": 8, "likeness": 0.41, "nearest": 0.35, "in_band": 7, "copies": 0, "variety": 0.9},
              300: {"faces": 8, "scored": 8, "likeness": 0.30, "nearest": 0.05, "in_band": 8, "copies": 2,
                    "copied": ["training image 1"],
                    "reason": "copies_training_photo: 2 of 8 validation images reproduce a training photo"},
              400: {"faces": 8, "scored": 8, "likeness": 0.40, "nearest": 0.36, "in_band": 8, "copies": 0, "variety": 0.8}}
    faces = np.zeros((3, 128))
    faces[1, 0] = faces[2, 1] = 0.35
    current = {}
    monkeypatch.setattr(validate, "reference_embeddings", lambda images: faces)
    monkeypatch.setattr(validate, "_identity_of_step", lambda *args: {"reason": None, **script[current["step"]]})
    saved = []

    def save_best(folder):
        saved.append(current["step"])
        (folder / "pytorch_lora_weights.safetensors").write_bytes(b"weights")

    images = [Image.new("RGB", (64, 64))] * 8
    for step in script:
        current["step"] = step
        record = validate.score_validation_step(tmp_path, step, images, images[:3], 400, save_best)
    assert saved == [100, 200]  # 300 copies, 400 is only one render better than 200
    assert record["best_step"] == 200 and record["recommended"] == "best"
    assert record["band"] == likeness_band(faces).to_dict()
    assert [(r["step"], r["renders"], r["in_band"], r["copies"]) for r in record["steps"]] == [
        (100, 8, 3, 0), (200, 8, 7, 0), (300, 8, 8, 2), (400, 8, 8, 0)]
    line = validate.best_line(tmp_path)
    assert line.startswith("best/: step 200: 7 of 8 portraits look like you, likeness 0.41; your own new photos land within "
                           f"{record['band']['you_within']:.2f}")

    from portraitkit.train.run_folder import ZONE_COLOURS, plot_likeness

    picture = np.asarray(Image.open(plot_likeness(tmp_path)).convert("RGB")).astype(int)
    red, green = picture[..., 0], picture[..., 1]
    # the copying step is crossed out in red and the best step ringed in green
    assert ((red > 180) & (green < 80)).sum() > 20 and ((green > 100) & (red < 80)).sum() > 20
    for colour in ZONE_COLOURS.values():  # each zone of the band shaded
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(picture[..., :3] - rgb).sum(axis=2) <= 3).sum() > 500, colour


def test_validation_is_spread_over_the_run():
    def steps(**settings):
        return TrainConfig(dataset_dir="d", out_dir="o", **settings).validated_steps()

    assert steps(steps=1000) == list(range(100, 1001, 100))  # every tenth
    assert steps(steps=200) == [50, 100, 150, 200]  # at least 50 steps apart
    assert steps(steps=8) == [8] and steps(steps=100, validate_every=100) == [100]
    assert steps(steps=100, validate_every=0) == []  # 0 means never, as --checkpoint-every 0 does
    assert steps(steps=10, validate_every=4) == [4, 8, 10] and steps(steps=10, validate=False) == []


def test_a_tiny_run_validates_as_sample_draws(tmp_path, face_dataset, capsys):
    """Eight renders by default (two styles x four seeds), drawn with DPM++ 2M Karras at the
    style's guidance and negative prompt; identity.json with the ceiling and best_step; likeness.png;
    the CLI's closing line. The tiny base's renders hold no face: best_step is honestly none."""
    from portraitkit.sample.styles import load_styles

    run = tmp_path / "run"
    assert main(["train", str(face_dataset), "--out", str(run), "--base", "tiny-sd", "--steps", "1", "--rank", "4",
                 "--optimizer", "adamw", "--checkpoint-every", "0", "--validation-steps", "1"]) == 0
    renders = sorted(p.name for p in (run / "validation" / "step_000001").glob("*.png"))
    assert len(renders) == 8 and renders[0] == "outdoor_seed0.png"
    record = json.loads((run / "identity.json").read_text())
    used = record["recipe"]
    assert used["scheduler"] == "DPMSolverMultistepScheduler" and used["karras_sigmas"] is True
    studio = load_styles(family="sd")["studio"]
    first = used["renders"][0]
    assert (first["style"], first["prompt"], first["negative_prompt"], first["guidance_scale"]) == (
        "studio", studio.render("sks", "person")[0], studio.negative_prompt, studio.guidance_scale)
    assert record["band"]["photos"] >= 2 and 0 < record["band"]["spread"] < 0.3  # crops of one photograph: little spread
    assert record["best_step"] is None and record["steps"][0]["faces"] == 0 and record["steps"][0]["renders"] == 8
    assert (run / "likeness.png").read_bytes()[:4] == b"\x89PNG"
    assert "best/: none (no validation step could be judged: no face was found in the 8 validation images)" in capsys.readouterr().out


def test_the_planner_prints_the_cost_of_validation():
    from portraitkit.plan.devices import DEVICES
    from portraitkit.plan.estimate import plan_for_training, plan_run

    def plan(**settings):
        return plan_for_training(TrainConfig(dataset_dir="d", out_dir="o", base="tiny-sd", **settings), DEVICES["t4"])

    default, fewer, none = plan(steps=1000), plan(steps=1000, validation_seeds=(0,)), plan(steps=1000, validate=False)
    assert none.validation_seconds == 0 and default.validation_seconds == pytest.approx(4 * fewer.validation_seconds)
    assert (default.config.validations, default.config.validation_renders) == (10, 8)  # the trainer's own schedule
    assert default.total_seconds == none.total_seconds  # the steps' time; validation comes on top, and is printed
    assert "validation" in plan_run("tiny-sd", gpu="t4").summary()


def test_a_dataset_without_the_person_s_words_is_refused_before_loading(tmp_path, face_dataset):
    import shutil

    from portraitkit.core.errors import PortraitkitError
    from portraitkit.train.loop import train

    dataset = tmp_path / "dataset"
    shutil.copytree(face_dataset, dataset)
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    (dataset / "metadata.jsonl").write_text("".join(json.dumps({**r, "text": "my face"}) + "\n" for r in rows))
    with pytest.raises(PortraitkitError, match="train with --no-validate"):
        train(TrainConfig(dataset_dir=str(dataset), out_dir=str(tmp_path / "run"), base="tiny-sd", steps=1))
    with pytest.raises(PortraitkitError, match="unknown style"):
        train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / "other"), base="tiny-sd", steps=1,
                          validation_styles=("nope",)))


def test_best_moves_only_to_the_newest_step_whose_lora_is_at_hand():
    """Validations arrive in order and best/ can only save the step just validated: a later step
    that lifts the top never makes an earlier, unsaved step the best."""
    rows = [row(100, 4), row(200, 5), row(300, 6)]  # 200 is within one render of 300, but was never saved
    chosen = [validate.best_step(rows[:n]) for n in (1, 2, 3)]
    assert chosen == [100, 100, 300]
    assert all(best in (chosen[n - 1], rows[n]["step"]) for n, best in enumerate(chosen[1:], 1))


def test_the_worked_example_is_a_record_validation_writes_today_and_reads_as_its_script_says(tmp_path, samples_dir):
    """notebook 04's worked example (real photos standing in for renders, measured by
    benchmarks/worked_example.py): its rows carry exactly the keys validation writes now (a renamed
    field would leave the committed numbers drawing nothing), best/ is the step of the person's
    other photos, the steps of edits of the training photos are refused as copies, other people
    land beyond the band, and it is drawn as a run's likeness.png is."""
    from portraitkit.train import likeness_example

    example = likeness_example.load()
    photo = Image.open(samples_dir / "hopper.jpg").convert("RGB")
    today = validate.score_validation_step(tmp_path, 1, [photo], [photo], 1, save_best=lambda folder: None)
    assert set(example) - {"worked_example"} == set(today)
    assert all(set(row) == set(today["steps"][0]) for row in example["steps"])
    rows = {row["step"]: row for row in example["steps"]}
    script = example["worked_example"]["script"]
    assert example["best_step"] == 300 and script["300"] == "the person's other shots"
    assert rows[300]["in_band"] >= 6 and rows[300]["copies"] == 0
    assert rows[100]["likeness"] > example["band"]["someone_else_beyond"] and rows[100]["in_band"] == 0
    assert rows[500]["copies"] == rows[500]["renders"] and "edits of the training photos" in script["500"]
    assert rows[500]["in_band"] > 0  # copies sit inside the band too: only the copy check tells them from a likeness
    said = likeness_example.lines(example)
    assert "kept as best/" in said[2] and "give a training photo back" in said[4] and said[-1].startswith("Measured on")
    likeness_example.figure(example).savefig(tmp_path / "example.png")
    picture = np.asarray(Image.open(tmp_path / "example.png").convert("RGB")).astype(int)
    red, green = picture[..., 0], picture[..., 1]
    assert ((red > 180) & (green < 80)).sum() > 20 and ((green > 100) & (red < 80)).sum() > 20  # copies crossed, best ringed
