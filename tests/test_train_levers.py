"""Training's likeness levers on the tiny bases: masked loss, caption dropout, DoRA."""

from __future__ import annotations

import json

import pytest

from portraitkit.cli import main
from portraitkit.core.errors import PortraitkitError
from portraitkit.models.lora import LORA_FILE, kohya_file
from portraitkit.train.loop import TrainConfig, train

# Wide crops: at the latents' 16 x 16 the face and hair (dilated) leave part of each crop as background.
CROPS = [(0, 0, 512), (20, 30, 450), (10, 10, 490), (40, 20, 420)]
SIZE = 128


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory, portrait_path):
    """Four 128 px crops of a real portrait with prep's own masks of them (from the photo's landmarks)."""
    import numpy as np
    from PIL import Image

    from portraitkit.faces.detect import detect_faces
    from portraitkit.prep import crop_mask

    folder = tmp_path_factory.mktemp("masked")
    photo = Image.open(portrait_path).convert("RGB")
    landmarks = detect_faces(photo)[0].landmarks
    rows = []
    for index, (left, top, size) in enumerate(CROPS):
        name = f"face_{index}.png"
        photo.crop((left, top, left + size, top + size)).resize((SIZE, SIZE), Image.LANCZOS).save(folder / name)
        corners = np.array([[left, top], [left + size, top], [left + size, top + size], [left, top + size]], dtype=float)
        (folder / "masks").mkdir(exist_ok=True)
        crop_mask(landmarks, corners, SIZE).save(folder / "masks" / name)
        rows.append({"file_name": name, "text": "a photo of sks person" + (", close-up" if index % 2 else ""),
                     "mask_file_name": f"masks/{name}"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def config(dataset, out, **overrides) -> TrainConfig:
    settings = dict(dataset_dir=str(dataset), out_dir=str(out), base="tiny-sd", steps=3, rank=4, lr=1e-2, resolution=SIZE,
                    checkpoint_every=0, validation_steps=1, validation_seeds=(0,), optimizer="adamw")
    return TrainConfig(**{**settings, **overrides})


def lora_weights(run):
    from safetensors.torch import load_file

    return load_file(run / LORA_FILE)


def same(a, b) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_masks_load_beside_the_latents_and_leave_background(masked_dataset):
    from portraitkit.train.cache import latent_masks, load_examples

    masks = latent_masks(load_examples(str(masked_dataset)), SIZE, SIZE // 8)
    assert masks.shape == (len(CROPS), 1, 16, 16)
    assert all(0.2 < float(m.mean()) < 0.85 for m in masks)  # the face and hair, not the whole frame
    assert all(float(m[0, -1, :].max()) == 0 or float(m[0, :, 0].max()) == 0 for m in masks)


def test_masked_loss_changes_the_lora_and_background_weight_1_is_the_plain_loss(tmp_path, masked_dataset):
    # Six steps: over Adam's first steps an update is about lr x sign(gradient), and the masked
    # gradient's signs can match the plain one's for a step or two.
    runs = {name: train(config(masked_dataset, tmp_path / name, steps=6, **settings)) for name, settings in [
        ("plain", {}), ("masked", {"masked_loss": True}), ("all", {"masked_loss": True, "background_weight": 1.0})]}
    losses = {name: [json.loads(line)["loss"] for line in (run / "train_log.jsonl").read_text().splitlines()]
              for name, run in runs.items()}
    assert losses["masked"][0] != losses["plain"][0]  # the same noise, another objective
    assert not same(lora_weights(runs["plain"]), lora_weights(runs["masked"]))
    # the mask is wired in, and weighs nothing more than it should
    assert losses["all"] == losses["plain"] and same(lora_weights(runs["plain"]), lora_weights(runs["all"]))


def test_a_dataset_without_masks_is_refused_in_one_sentence(tmp_path, masked_dataset, capsys):
    import shutil

    bare = tmp_path / "old-dataset"
    shutil.copytree(masked_dataset, bare, ignore=shutil.ignore_patterns("masks"))
    rows = [json.loads(line) for line in (bare / "metadata.jsonl").read_text().splitlines()]
    (bare / "metadata.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "mask_file_name"}) + "\n" for r in rows))
    with pytest.raises(PortraitkitError, match="no face masks"):
        train(config(bare, tmp_path / "run", masked_loss=True))
    status = main(["train", str(bare), "--out", str(tmp_path / "cli"), "--base", "tiny-sd", "--masked-loss", "--steps", "1"])
    error = capsys.readouterr().err
    assert status == 2 and "Traceback" not in error
    assert [line for line in error.splitlines() if "no face masks" in line][0].count(". ") == 0  # one sentence


def test_fractions_outside_0_1_are_refused(tmp_path, masked_dataset):
    with pytest.raises(PortraitkitError, match="--caption-dropout 1.5"):
        train(config(masked_dataset, tmp_path / "a", caption_dropout=1.5))
    with pytest.raises(PortraitkitError, match="--background-weight -0.1"):
        train(config(masked_dataset, tmp_path / "b", background_weight=-0.1))


def test_caption_dropout_1_trains_on_the_bare_trigger_caption(tmp_path, masked_dataset):
    import shutil

    bare = tmp_path / "bare-captions"
    shutil.copytree(masked_dataset, bare)
    rows = [json.loads(line) for line in (bare / "metadata.jsonl").read_text().splitlines()]
    (bare / "metadata.jsonl").write_text("".join(json.dumps({**r, "text": "a photo of sks person"}) + "\n" for r in rows))
    dropped = lora_weights(train(config(masked_dataset, tmp_path / "dropped", caption_dropout=1.0)))
    on_bare = lora_weights(train(config(bare, tmp_path / "on-bare")))
    full = lora_weights(train(config(masked_dataset, tmp_path / "full")))
    assert same(dropped, on_bare) and not same(dropped, full)


def test_sdxl_masked_loss_with_prior_preservation_min_snr_and_dropout(tmp_path, masked_dataset):
    run = train(config(masked_dataset, tmp_path / "run", base="tiny-sdxl", steps=2, masked_loss=True, caption_dropout=0.5,
                       snr_gamma=5.0, class_dir=str(tmp_path / "class"), num_class_images=2))
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["loss"] > 0 for row in rows)
    saved = json.loads((run / "config.json").read_text())["settings"]
    assert saved["masked_loss"] and saved["caption_dropout"] == 0.5


def test_dora_trains_and_both_files_load_back(tmp_path, masked_dataset):
    import torch
    from safetensors.torch import load_file

    from portraitkit.models import lora
    from portraitkit.models.bases import load_pipeline
    from portraitkit.plan.estimate import lora_parameter_count, plan_run

    run = train(config(masked_dataset, tmp_path / "run", dora=True, steps=4))
    weights = load_file(run / LORA_FILE)
    magnitudes = {k: v.float() for k, v in weights.items() if "lora_magnitude_vector" in k}  # saved in fp16
    assert magnitudes and len(magnitudes) == len([k for k in weights if "lora_A" in k or "lora.down" in k])

    fresh = load_pipeline("tiny-sd")
    lora.add_adapters(fresh.unet, 4, lora.UNET_TARGETS, use_dora=True)  # magnitudes start as W's row norms
    initial = {"unet." + n.replace(".default.weight", ""): p.detach() for n, p in fresh.unet.named_parameters() if "magnitude" in n}
    assert initial.keys() == magnitudes.keys()
    assert not all(torch.allclose(initial[k], magnitudes[k]) for k in initial)  # the magnitudes trained

    # the diffusers file: its DoRA output equals a pipeline carrying the same adapter
    kwargs = dict(prompt="a photo of sks person", num_inference_steps=2, height=64, width=64, output_type="np")
    pipe = load_pipeline("tiny-sd")
    pipe.load_lora_weights(str(run), weight_name=LORA_FILE)
    with_dora = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    base = load_pipeline("tiny-sd")(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(with_dora - base).max() > 1e-4

    # the kohya file: a dora_scale of shape (out, 1) beside every module's up and down (ComfyUI's
    # per-output form: tests/test_lora.py holds its formula against peft's), and diffusers loads it
    kohya = load_file(kohya_file(run))
    modules = [k[: -len(".lora_down.weight")] for k in kohya if k.endswith(".lora_down.weight")]
    assert modules and all(kohya[f"{m}.dora_scale"].shape == (kohya[f"{m}.lora_up.weight"].shape[0], 1) for m in modules)
    assert not any("magnitude" in k for k in kohya)
    other = load_pipeline("tiny-sd")
    other.load_lora_weights(str(run), weight_name=kohya_file(run).name)
    assert abs(other(**kwargs, generator=torch.Generator().manual_seed(0)).images - base).max() > 1e-4

    # the planner counts DoRA's magnitudes: exactly the parameters train adds
    counted = sum(p.numel() for p in fresh.unet.parameters() if p.requires_grad)
    assert lora_parameter_count("tiny-sd", 4, dora=True) == counted
    assert lora_parameter_count("tiny-sd", 4, dora=True) - lora_parameter_count("tiny-sd", 4) == sum(v.numel() for v in magnitudes.values())
    assert plan_run(base="tiny-sd", rank=4, gpu="t4", dora=True).parameters["lora"] == counted
