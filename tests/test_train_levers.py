"""Training's likeness levers on the tiny bases: masked loss, caption dropout, DoRA."""

from __future__ import annotations

import json

import pytest

from portraitkit.cli import main
from portraitkit.core.errors import PortraitkitError
from portraitkit.models.lora import LORA_FILE, kohya_file
from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import train

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


def test_sdxl_masked_loss_with_prior_preservation_min_snr_and_dropout(tmp_path, masked_dataset, first_step_loss):
    # Seed 109's first step draws a close-up (its caption longer than the bare trigger phrase) with
    # its caption dropped, at a low-noise timestep (SNR 34, where min-SNR weighs 5/34), beside a class image.
    run = train(config(masked_dataset, tmp_path / "run", base="tiny-sdxl", steps=1, seed=109, masked_loss=True,
                       caption_dropout=0.5, snr_gamma=5.0, class_dir=str(tmp_path / "class"), num_class_images=2))
    [row] = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    by_hand = first_step_loss(run)
    assert row["loss"] == pytest.approx(by_hand, rel=1e-5)
    # each lever changes this step's loss by more than that tolerance, so a run that ignored one would
    # not match (the dropped words, ", close-up", move the tiny random text encoder's output least: 3e-4)
    without = {"mask": first_step_loss(run, masked_loss=False), "min-SNR": first_step_loss(run, snr_gamma=None),
               "dropout": first_step_loss(run, caption_dropped=False), "prior": first_step_loss(run, class_dir=None)}
    for lever, loss in without.items():
        assert abs(loss - by_hand) > 1e-4 * by_hand, lever


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

    # The trained adapter in memory: the file's tensors in peft's DoRA layers (and, to compare, in
    # plain LoRA layers: the same A and B, no magnitudes). Outputs are the UNet's on one fixed input.
    def in_memory(dora: bool):
        unet = load_pipeline("tiny-sd").unet
        lora.add_adapters(unet, 4, lora.UNET_TARGETS, use_dora=dora)
        peft_names = {"lora.down.weight": "lora_A.default.weight", "lora.up.weight": "lora_B.default.weight",
                      "lora_magnitude_vector": "lora_magnitude_vector.default.weight"}
        state = {}
        for key, value in weights.items():
            module, _, tensor = key[len("unet."):].rpartition(".lora")
            state[f"{module}.{peft_names['lora' + tensor]}"] = value
        if not dora:
            state = {k: v for k, v in state.items() if "magnitude" not in k}
        loaded = unet.load_state_dict(state, strict=False)
        assert not loaded.unexpected_keys and not [k for k in loaded.missing_keys if "lora" in k]
        return unet

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    text = torch.randn(1, 77, fresh.unet.config.cross_attention_dim, generator=generator)

    def output(unet):
        with torch.no_grad():
            return unet(sample, torch.tensor([500]), encoder_hidden_states=text).sample

    dora, plain = output(in_memory(True)), output(in_memory(False))
    assert (dora - plain).abs().max() > 1e-3  # the trained magnitudes matter
    # the diffusers file: diffusers' loader gives exactly the in-memory DoRA adapter
    pipe = load_pipeline("tiny-sd")
    pipe.load_lora_weights(str(run), weight_name=LORA_FILE)
    assert torch.allclose(output(pipe.unet), dora, atol=1e-5)

    # the kohya file: a dora_scale of shape (out, 1) beside every module's up and down, in ComfyUI's
    # per-output form (tests/test_lora.py holds its formula against peft's); diffusers' SD loader drops dora_scale (with a warning),
    # so there it gives the plain LoRA of the same A and B, not the DoRA output: the known difference
    kohya = load_file(kohya_file(run))
    modules = [k[: -len(".lora_down.weight")] for k in kohya if k.endswith(".lora_down.weight")]
    assert modules and all(kohya[f"{m}.dora_scale"].shape == (kohya[f"{m}.lora_up.weight"].shape[0], 1) for m in modules)
    assert not any("magnitude" in k for k in kohya)
    other = load_pipeline("tiny-sd")
    other.load_lora_weights(str(run), weight_name=kohya_file(run).name)
    assert torch.allclose(output(other.unet), plain, atol=1e-5)

    # the planner counts DoRA's magnitudes: exactly the parameters train adds
    counted = sum(p.numel() for p in fresh.unet.parameters() if p.requires_grad)
    assert lora_parameter_count("tiny-sd", 4, dora=True) == counted
    assert lora_parameter_count("tiny-sd", 4, dora=True) - lora_parameter_count("tiny-sd", 4) == sum(v.numel() for v in magnitudes.values())
    assert plan_run(base="tiny-sd", rank=4, gpu="t4", dora=True).parameters["lora"] == counted
