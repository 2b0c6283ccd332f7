"""What a T4 run does that fp32 CPU runs never showed, checked on a CPU: a second run in another
precision, the GPU handed back after a failure, resume only on the same photos and from a whole
checkpoint, the text encoders under autocast, the VAE cache in fp32, SDXL's size ids, guidance 0,
(one learning-rate schedule however many processes: tests/test_multiprocess.py). The tiny bases
have random weights: these tests prove mechanics, never likeness."""

from __future__ import annotations

import json
import shutil
import weakref

import pytest

from portraitkit.core.errors import PortraitkitError
from portraitkit.train import checkpoints
from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import train

QUICK = dict(base="tiny-sd", rank=4, lr=1e-3, optimizer="adamw", validate=False, checkpoint_every=0)


def quick(dataset, out, **overrides) -> TrainConfig:
    return TrainConfig(dataset_dir=str(dataset), out_dir=str(out), **{**QUICK, "steps": 2, **overrides})


def test_a_second_run_in_another_precision_runs_in_the_same_process_its_text_encoder_under_autocast(
        tmp_path, face_dataset, monkeypatch):
    import torch

    import portraitkit.train.cache as cache

    seen = []  # (autocast on, its dtype) whenever captions are encoded with gradients

    def encode_text(pipe, captions, device):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return original(pipe, captions, device)

    original = cache.encode_text
    monkeypatch.setattr(cache, "encode_text", encode_text)
    train(quick(face_dataset, tmp_path / "fp32", steps=1, mixed_precision="no", train_text_encoder=True))
    assert seen and not any(on for on, _ in seen)
    seen.clear()
    # The advice after NaN images is another precision; accelerate used to refuse it in one process.
    run = train(quick(face_dataset, tmp_path / "bf16", steps=1, mixed_precision="bf16", train_text_encoder=True))
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)


def test_a_failed_run_moves_the_models_off_the_device_and_keeps_no_tensor_in_its_traceback(
        tmp_path, face_dataset, monkeypatch):
    """IPython keeps the last exception, and with it every frame of its traceback: on a GPU, the
    models, the optimizer's state and the failed step's activations."""
    import gc

    import portraitkit.train.loop as loop
    from portraitkit.train import objective

    on_device, held = [], {}

    class Recorded(loop.Placement):  # which models are on the device after each move
        def _place(self, names):
            super()._place(names)
            on_device.append(self.here)

    def failing_step(pipe, scheduler, latents, *args, **kwargs):
        held["unet"], held["latents"] = weakref.ref(pipe.unet), weakref.ref(latents)
        activations = objective_loss(pipe, scheduler, latents, *args, **kwargs)  # noqa: F841 (held by this frame)
        raise RuntimeError("CUDA out of memory")

    objective_loss = objective.step_loss
    monkeypatch.setattr(loop, "Placement", Recorded)
    monkeypatch.setattr(objective, "step_loss", failing_step)
    with pytest.raises(RuntimeError, match="out of memory") as failure:
        train(quick(face_dataset, tmp_path / "run"))
    assert "unet" in on_device[-2] and on_device[-1] == frozenset()  # the UNet trained there, then left
    gc.collect()
    assert failure.value.__traceback__ is not None  # the notebook still holds the exception...
    assert held["unet"]() is None and held["latents"]() is None  # ...but no longer the models or the batch


def test_resume_refuses_other_photos_and_accepts_the_same_ones_moved(tmp_path, face_dataset):
    from PIL import Image

    dataset = shutil.copytree(face_dataset, tmp_path / "dataset")
    run = train(quick(dataset, tmp_path / "run", steps=2, checkpoint_every=1))
    assert json.loads((run / "config.json").read_text())["dataset"]["images"] == 4

    moved = shutil.copytree(dataset, tmp_path / "on-drive")  # the same photos elsewhere: fine
    assert train(quick(moved, run, steps=2, checkpoint_every=1, resume=True)) == run

    # The photos prepared again: one image changes, the captions do not.
    Image.open(moved / "face_1.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(moved / "face_1.png")
    for steps in (2, 3):  # neither "already finished" nor continued on other photos
        with pytest.raises(PortraitkitError, match=r"photos or captions in .* changed since the run began.*new --out"):
            train(quick(moved, run, steps=steps, checkpoint_every=1, resume=True))
    # A caption changed alone counts too.
    rows = (dataset / "metadata.jsonl").read_text().replace("close-up", "portrait")
    (dataset / "metadata.jsonl").write_text(rows)
    with pytest.raises(PortraitkitError, match="changed since the run began"):
        train(quick(dataset, run, steps=3, checkpoint_every=1, resume=True))


def _tiny_training_state():
    import torch

    layer = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return {f"layer.{name}": parameter for name, parameter in layer.named_parameters()}, optimizer


def test_a_checkpoint_with_a_truncated_file_is_skipped_for_the_one_before(tmp_path, capsys):
    trainable, optimizer = _tiny_training_state()
    for step in (1, 2):
        checkpoints.save_checkpoint(tmp_path, step, trainable, optimizer, {"lr_scheduler": {}})
    newest = checkpoints.checkpoint_dir(tmp_path, 2) / "optimizer.pt"
    assert checkpoints.latest_checkpoint(tmp_path)[0] == 2
    # Drive's upload cut short: state.json arrived, the optimizer file did not finish.
    newest.write_bytes(newest.read_bytes()[:100])
    assert checkpoints.latest_checkpoint(tmp_path, report=True)[0] == 1
    assert "step_000002 is damaged (optimizer.pt has 100 bytes" in capsys.readouterr().out
    # The same size with other content: the hash tells.
    lora_file = checkpoints.checkpoint_dir(tmp_path, 1) / "lora.safetensors"
    data = bytearray(lora_file.read_bytes())
    data[-1] ^= 0xFF
    lora_file.write_bytes(bytes(data))
    assert checkpoints.latest_checkpoint(tmp_path) is None
    # state.json itself half-written
    (checkpoints.checkpoint_dir(tmp_path, 2) / "state.json").write_text('{"step": 2, "lr_')
    assert checkpoints.damage(checkpoints.checkpoint_dir(tmp_path, 2)) == "state.json is unreadable"


def test_the_vae_encodes_the_cache_in_fp32_whatever_the_weights(face_dataset):
    import copy
    import types

    import torch
    from PIL import Image

    from portraitkit.models.bases import load_pipeline
    from portraitkit.train.cache import encode_images, image_to_tensor

    images = [Image.open(path).convert("RGB") for path in sorted(face_dataset.glob("*.png"))]
    half = load_pipeline("tiny-sd", dtype=torch.bfloat16)  # the weights of a bf16 run (L4, A100)
    # the same weights, fp32 arithmetic, in a stand-in of the same pipeline class (the family is read from it)
    upcast = type(type(half).__name__, (types.SimpleNamespace,), {})(vae=copy.deepcopy(half.vae).float())
    reference = encode_images(upcast, images, 64)
    latents = encode_images(half, images, 64)
    assert half.vae.dtype == torch.bfloat16  # back as the run keeps it
    assert latents.dtype == torch.float32 and (latents - reference).abs().max() < 1e-5
    with torch.no_grad():  # what the cache held before: the same weights in bf16 arithmetic, off by ~1e-3
        pixels = torch.stack([image_to_tensor(image, 64) for image in images]).to(torch.bfloat16)
        in_bf16 = half.vae.encode(pixels).latent_dist.mean.float() * half.vae.config.scaling_factor
    assert (in_bf16 - reference).abs().max() > 1e-3


def test_sdxl_size_ids_say_the_face_crops_own_size_uncropped():
    import types

    from PIL import Image

    from portraitkit.prep.crops import size_conditioning
    from portraitkit.train.cache import size_time_ids

    photo = types.SimpleNamespace(measurements={"crop": {"side_px": 411.6}, "height": 3000, "width": 4000})
    recorded = size_conditioning(photo, None)
    assert recorded == {"original_size": [412, 412], "crop_top_left": [0, 0]}
    examples = [{"image": Image.new("RGB", (128, 128)), **recorded},
                {"image": Image.new("RGB", (128, 128)), "original_size": [3000, 4000], "crop_top_left": [40, 200]},  # older prep
                {"image": Image.new("RGB", (128, 128))}]  # a class image
    assert size_time_ids(examples, 64).tolist() == [[412, 412, 0, 0, 64, 64], [64, 64, 0, 0, 64, 64], [64, 64, 0, 0, 64, 64]]


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory, face_dataset):
    return train(quick(face_dataset, tmp_path_factory.mktemp("sdxl"), base="tiny-sdxl", steps=1))


def test_sampling_keeps_guidance_0_and_asks_sdxl_for_an_uncropped_picture_at_its_size(sdxl_run, tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    from portraitkit.sample.render import SampleConfig, read_parameters, sample

    calls = []
    forward = UNet2DConditionModel.forward

    def recorded(self, sample, *args, added_cond_kwargs=None, **kwargs):
        calls.append((len(sample), added_cond_kwargs["time_ids"].tolist()))
        return forward(self, sample, *args, added_cond_kwargs=added_cond_kwargs, **kwargs)

    monkeypatch.setattr(UNet2DConditionModel, "forward", recorded)
    out = tmp_path / "images"
    [entry] = sample(SampleConfig(run_dir=str(sdxl_run), out_dir=str(out), styles=["studio"], per_style=1, steps=2,
                                  guidance_scale=0, token="sks", class_word="person"))
    assert entry["guidance_scale"] == 0 and read_parameters(out / entry["file"])["CFG scale"] == "0"
    # guidance 0: one UNet pass per step, no unconditional half; the ids of a 64 px picture, uncropped
    assert calls and all(batch == 1 and ids == [[64, 64, 0, 0, 64, 64]] for batch, ids in calls)
