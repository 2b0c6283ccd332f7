"""Every stage through the command line, as a user runs them: prep, train with the text encoder
(gradient checkpointing on), sample, pick. `.ci/versions` runs this at Colab's versions and at
the declared floors."""

from __future__ import annotations

import json
import shutil

from portraitkit.cli import main


PHOTOS = ["hopper.jpg", "hopper_soft.jpg", "hopper_tilted_bright.jpg", "hopper_warm_closeup.jpg", "hopper_greyscale.png",
          "hopper_phone_sideways.jpg"]


def test_prep_train_with_text_encoder_sample_and_pick(tmp_path, samples_dir, capsys, umask_022, private_paths):
    from safetensors.torch import load_file

    from portraitkit.train.cache import load_examples, size_time_ids

    dataset, run, portraits = tmp_path / "dataset", tmp_path / "grace", tmp_path / "portraits"
    photos = tmp_path / "photos"  # six of the sample photos: prep needs five, and takes seconds a photo
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy2(samples_dir / name, photos / name)
    assert main(["prep", str(photos), "--out", str(dataset), "--resolution", "128", "--allow-same-photograph"]) == 0
    rows = [json.loads(line) for line in (dataset / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) >= 5 and all(len(row["original_size"]) == 2 and len(row["crop_top_left"]) == 2 for row in rows)
    # SDXL's size ids: each face crop's own size in its photo's pixels, uncropped, the training size.
    sides = {p["output"]: round(p["measurements"]["crop"]["side_px"])
             for p in json.loads((dataset / "report.json").read_text())["photos"] if p["status"] == "accepted"}
    examples = load_examples(str(dataset))
    time_ids = size_time_ids(examples, 64).tolist()
    assert sorted(ids[0] for ids in time_ids) == sorted(sides.values()) and min(sides.values()) > 128
    assert all(ids == [ids[0], ids[0], 0, 0, 64, 64] for ids in time_ids)

    assert main(["train", str(dataset), "--out", str(run), "--base", "tiny-sdxl", "--resolution", "64", "--steps", "2",
                 "--rank", "4", "--lr", "1e-2", "--train-text-encoder", "--gradient-checkpointing", "--optimizer", "adamw",
                 "--checkpoint-every", "0", "--validation-steps", "1", "--validation-seeds", "0"]) == 0
    # train's last lines say which file goes into which tool
    printed = capsys.readouterr().out.splitlines()
    assert any(line.strip().startswith("grace.safetensors: for AUTOMATIC1111") and "<lora:grace:1>" in line for line in printed[-3:])
    assert any(line.strip().startswith("pytorch_lora_weights.safetensors: for diffusers") and "ComfyUI maps none" in line
               for line in printed[-3:])
    kohya = load_file(run / "grace.safetensors")  # named after the run
    assert {key.split("_")[1] for key in kohya} == {"unet", "te1", "te2"}
    assert all(value.abs().max() > 0 for key, value in kohya.items() if key.endswith(".lora_up.weight"))
    assert json.loads((run / "identity.json").read_text())["steps"][0]["step"] == 2

    assert main(["sample", str(run), "--out", str(portraits), "--styles", "studio", "--per-style", "2",
                 "--steps", "2"]) == 0
    manifest = json.loads((portraits / "manifest.json").read_text())
    assert [entry["seed"] for entry in manifest] == [0, 1]
    assert main(["pick", str(portraits), "--reference", str(dataset), "--top", "2"]) == 0
    ranking = json.loads((portraits / "ranking.json").read_text())
    assert {row["file"] for row in ranking} == {entry["file"] for entry in manifest}
    # every file and folder the stages wrote can be read by other users (umask 022): a teacher's web
    # server, a ComfyUI container; safetensors and tempfile make theirs 0600
    assert private_paths(dataset) + private_paths(run) + private_paths(portraits) == []
