"""Held-out photos (`train --holdout N`): chosen for variety, never drawn for training, and a
validation loss on them that compares across steps."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from portraitkit.core.errors import PortraitkitError
from portraitkit.train.cache import split_holdout
from portraitkit.train.config import TrainConfig


def test_the_most_unlike_photo_is_held_out_first(samples_dir):
    """Farthest-point on face embeddings: among four photos of Grace Hopper and one of Eileen
    Collins, the astronaut is the one farthest from the rest, so she is held out first."""
    names = ["hopper.jpg", "hopper_soft.jpg", "astronaut.jpg", "hopper_warm_closeup.jpg", "hopper_tilted_bright.jpg"]
    examples = [{"image": Image.open(samples_dir / name).convert("RGB"), "file_name": name} for name in names]
    training, held_out = split_holdout(examples, 1)
    assert [e["file_name"] for e in held_out] == ["astronaut.jpg"]
    assert [e["file_name"] for e in training] == [n for n in names if n != "astronaut.jpg"]  # the others, in order
    training, held_out = split_holdout(examples, 2)
    assert held_out[0]["file_name"] == "astronaut.jpg" and held_out[1]["file_name"].startswith("hopper")
    with pytest.raises(PortraitkitError, match="hold out at most 3"):
        split_holdout(examples, 4)


def test_holdout_2_keeps_two_photos_out_of_every_draw(tmp_path, face_dataset, monkeypatch):
    import torch

    import portraitkit.train.loop as loop
    from portraitkit.train.loop import train

    caches, drawn = [], []
    encode, inputs = loop.encode_examples, loop.batch_inputs

    def encode_and_keep(pipe, examples, *args, **kwargs):
        cache = encode(pipe, examples, *args, **kwargs)
        caches.append(([e["file_name"] for e in examples], cache["latents"]))
        return cache

    def inputs_and_keep(pipe, cache, picks, *args, **kwargs):
        latents, cond = inputs(pipe, cache, picks, *args, **kwargs)
        drawn.append(latents.detach().clone())
        return latents, cond

    monkeypatch.setattr(loop, "encode_examples", encode_and_keep)
    monkeypatch.setattr(loop, "batch_inputs", inputs_and_keep)
    run = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / "run"), base="tiny-sd", steps=4, rank=4,
                            lr=1e-2, optimizer="adamw", checkpoint_every=0, validate_every=2, holdout=2,
                            validation_styles=("studio",), validation_seeds=(0,), validation_steps=1))
    held_out = json.loads((run / "config.json").read_text())["holdout"]
    (trained_names, trained), (kept_names, kept) = caches
    assert len(held_out) == 2 and kept_names == held_out and not set(held_out) & set(trained_names)
    assert len(drawn) == 4 and all(any(torch.equal(d[0], t) for t in trained) for d in drawn)
    assert not any(torch.equal(d[0], k) for d in drawn for k in kept)  # no held-out photo was ever trained on

    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "validation_loss" in r] == [2, 4] and all(r["validation_loss"] > 0 for r in rows[1::2])
    assert json.loads((run / "identity.json").read_text())["held_out_faces"] == 2  # the likeness is measured on them too


def test_validation_loss_is_identical_for_identical_weights(face_dataset):
    """Fixed noise and timesteps: the same weights give the same loss (so a change across steps is
    the LoRA's doing), and other weights another loss."""
    import torch
    from diffusers import DDPMScheduler

    from portraitkit.models import lora
    from portraitkit.models.bases import load_pipeline
    from portraitkit.train.cache import encode_examples, load_examples
    from portraitkit.train.validate import validation_loss

    pipe = load_pipeline("tiny-sd")
    lora.add_to_pipeline(pipe, 4, None, False)
    examples = load_examples(str(face_dataset))[:2]
    cache = encode_examples(pipe, examples, 64, encode_captions=True)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    def loss():
        return validation_loss(pipe, cache, [e["text"] for e in examples], scheduler, 64, 5.0, seed=0)

    first = loss()
    torch.manual_seed(1)  # a draw elsewhere in the run must not change it
    assert loss() == first
    with torch.no_grad():
        for name, parameter in pipe.unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    assert loss() != first
