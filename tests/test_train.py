"""LoRA training on the offline tiny bases: outputs, learning, resume, and clear errors."""

from __future__ import annotations

import json
import sys

import pytest

from portraitkit.train import checkpoints

from portraitkit.models import lora
from portraitkit.cli import main
from portraitkit.core.errors import PortraitkitError
from portraitkit.models.lora import LORA_FILE, kohya_file
from portraitkit.train.config import TrainConfig
from portraitkit.train.draws import batch_indices
from portraitkit.train.loop import train
from portraitkit.train.validate import denoising_loss


def tiny_config(dataset, out, **overrides) -> TrainConfig:
    settings = dict(dataset_dir=str(dataset), out_dir=str(out), base="tiny-sd", steps=8, rank=4, lr=1e-3,
                    checkpoint_every=4, validation_steps=2)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, face_dataset):
    out = tmp_path_factory.mktemp("run")
    # A high learning rate: the tiny base is random, and the test wants a clear effect quickly.
    return train(tiny_config(face_dataset, out, steps=60, lr=1e-2, rank=8, checkpoint_every=20, validate_every=30))


def test_run_folder_has_every_output(trained_run, first_step_loss):
    settings = json.loads((trained_run / "config.json").read_text())
    assert settings["settings"]["rank"] == 8 and settings["settings"]["optimizer"] == "adamw8bit"
    assert settings["base"]["family"] == "sd" and settings["versions"]["torch"]

    rows = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, 61))
    assert all({"step", "loss", "lr", "seconds"} <= row.keys() and row["lr"] == 1e-2 for row in rows)
    # the logged loss is the objective of that step's draw (min-SNR-weighted MSE), recomputed by hand
    assert rows[0]["loss"] == pytest.approx(first_step_loss(trained_run), rel=1e-5)

    assert (trained_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (trained_run / "validation" / "step_000030.png").is_file()
    assert len(list((trained_run / "validation" / "step_000060").glob("*.png"))) == 2 * 4  # styles x seeds
    assert [step for step, _ in checkpoints.complete_checkpoints(trained_run)] == [20, 40, 60]


def test_lora_files_load_in_diffusers_and_kohya_layout(trained_run):
    import torch
    from safetensors.torch import load_file

    from portraitkit.models.bases import load_pipeline

    diffusers_keys = load_file(trained_run / LORA_FILE).keys()
    assert diffusers_keys and all(key.startswith("unet.") for key in diffusers_keys)
    assert any(".attn1.to_q.lora" in key for key in diffusers_keys) and any(".attn2.to_v.lora" in key for key in diffusers_keys)

    kohya = load_file(kohya_file(trained_run))
    downs = [key for key in kohya if key.endswith(".lora_down.weight")]
    assert downs and all(key.startswith("lora_unet_") for key in kohya)
    assert all(kohya[key.replace(".lora_down.weight", ".alpha")].item() == 8 for key in downs)
    assert len(downs) == len([key for key in kohya if key.endswith(".lora_up.weight")])

    pipe = load_pipeline("tiny-sd")
    kwargs = dict(prompt="a photo of sks person", num_inference_steps=2, height=64, width=64, output_type="np")
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    pipe.load_lora_weights(trained_run, weight_name=LORA_FILE)
    with_lora = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    assert abs(with_lora - base).max() > 1e-3


def test_lora_lowers_the_denoising_loss_on_its_dataset(trained_run, face_dataset):
    before = denoising_loss("tiny-sd", str(face_dataset))
    after = denoising_loss("tiny-sd", str(face_dataset), lora_dir=str(trained_run))
    assert after < before * 0.95, (before, after)


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path, face_dataset):
    from safetensors.torch import load_file

    reference = train(tiny_config(face_dataset, tmp_path / "straight"))

    def disconnect(row):
        if row["step"] == 6:
            raise KeyboardInterrupt  # Colab dropping the runtime between checkpoints

    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(face_dataset, interrupted), on_step=disconnect)
    # Leftovers of a checkpoint write cut short must not be mistaken for a checkpoint.
    (interrupted / "checkpoints" / ".writing-abc").mkdir()
    (interrupted / "checkpoints" / "step_000005").mkdir()
    assert checkpoints.latest_checkpoint(interrupted)[0] == 4

    train(tiny_config(face_dataset, interrupted, resume=True))
    expected, resumed = load_file(reference / LORA_FILE), load_file(interrupted / LORA_FILE)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert (expected[key] - resumed[key]).abs().max().item() < 1e-5, key
    steps = [json.loads(line)["step"] for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # the lost steps 5-6 are logged once, not twice
    assert not (interrupted / "checkpoints" / ".writing-abc").exists()


def test_a_run_killed_while_saving_its_outputs_finishes_on_resume(tmp_path, face_dataset, monkeypatch):
    import portraitkit.train.validate

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the runtime dropped after the last checkpoint, before the outputs

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(portraitkit.train.validate, "run_validation", killed)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_config(face_dataset, run, steps=4))
    assert (run / LORA_FILE).is_file() and not (run / "validation" / "step_000004.png").exists()
    train(tiny_config(face_dataset, run, steps=4, resume=True))
    assert (kohya_file(run)).is_file() and (run / "validation" / "step_000004.png").is_file()
    with pytest.raises(PortraitkitError, match="at least 1"):
        train(tiny_config(face_dataset, tmp_path / "other", keep_checkpoints=0))


@pytest.mark.parametrize("checkpoint_every", [4, 0])
def test_a_finished_run_is_never_trained_again(tmp_path, face_dataset, capsys, checkpoint_every):
    """6 steps, checkpoints every 4 (not a multiple) or never: --resume finds the run finished and
    trains nothing; with checkpoints the last step is one, so more steps continue from step 6."""
    from portraitkit.train.checkpoints import latest_checkpoint

    run = tmp_path / "run"
    settings = dict(steps=6, checkpoint_every=checkpoint_every, validate=False)
    train(tiny_config(face_dataset, run, **settings))
    weights = (run / LORA_FILE).read_bytes()
    log = (run / "train_log.jsonl").read_text()
    capsys.readouterr()
    train(tiny_config(face_dataset, run, resume=True, **settings))
    assert "already finished 6 steps" in capsys.readouterr().out
    assert (run / LORA_FILE).read_bytes() == weights and (run / "train_log.jsonl").read_text() == log  # nothing retrained
    if checkpoint_every:
        assert latest_checkpoint(run)[0] == 6
        train(tiny_config(face_dataset, run, resume=True, **{**settings, "steps": 7}))
        rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == list(range(1, 8))  # step 7 only was added


def test_lora_alpha_reaches_both_files(tmp_path, face_dataset):
    import torch
    from safetensors.torch import load_file

    from portraitkit.models.bases import load_pipeline

    run = train(tiny_config(face_dataset, tmp_path / "run", steps=4, rank=4, alpha=16, lr=1e-2, save_precision="fp32"))
    trained = load_file(checkpoints.latest_checkpoint(run)[1] / "lora.safetensors")  # as trained: B, A, scale 16/4
    layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    expected = 4.0 * trained[f"unet.{layer}.lora_B.default.weight"] @ trained[f"unet.{layer}.lora_A.default.weight"]
    assert expected.abs().max() > 0

    kohya = load_file(kohya_file(run))
    name = "lora_unet_" + layer.replace(".", "_")
    rank = kohya[f"{name}.lora_down.weight"].shape[0]
    from_kohya = kohya[f"{name}.alpha"] / rank * kohya[f"{name}.lora_up.weight"] @ kohya[f"{name}.lora_down.weight"]
    assert torch.allclose(from_kohya, expected, atol=1e-6)

    pipe = load_pipeline("tiny-sd")
    pipe.load_lora_weights(run, weight_name=LORA_FILE)
    module = pipe.unet.get_submodule(layer)
    adapter = next(iter(module.lora_A))
    loaded = module.scaling[adapter] * module.lora_B[adapter].weight @ module.lora_A[adapter].weight
    assert torch.allclose(loaded, expected, atol=1e-6)


def test_validation_runs_where_the_unet_is_in_every_diffusers_release(monkeypatch):
    """Diffusers before late 2026 took a pipeline's device from its alphabetically first model,
    the text encoder, which validation leaves on the CPU while the UNet is on the GPU. Here the
    text encoder sits on the meta device so that the two places can be told apart on a CPU."""
    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    from portraitkit.models.bases import load_pipeline
    from portraitkit.models import families
    from portraitkit.models.conditioning import without_text_encoders

    def first_model(self):
        names, _ = self._get_signature_keys(self)
        return next(m.device for m in (getattr(self, n, None) for n in sorted(names)) if isinstance(m, torch.nn.Module))

    monkeypatch.setattr(DiffusionPipeline, "device", property(first_model))
    for base in ("tiny-sd", "tiny-sdxl"):
        pipe = load_pipeline(base)
        with torch.no_grad():
            embeddings = families.of(pipe).prompt_embeddings(pipe, "a photo of sks person", "blurry", torch.device("cpu"))
        for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if encoder is not None:
                encoder.to("meta")
        assert pipe.device.type == "meta"  # where pipe(...) itself would run
        images = without_text_encoders(pipe)(**embeddings, height=64, width=64, num_inference_steps=2, output_type="np").images
        assert np.isfinite(images).all() and pipe.text_encoder.device.type == "meta"


def test_interrupted_checkpoint_write_leaves_no_checkpoint(tmp_path, monkeypatch, face_dataset):
    import torch

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        train(tiny_config(face_dataset, tmp_path / "run", steps=4))
    assert checkpoints.latest_checkpoint(tmp_path / "run") is None
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


def test_existing_run_needs_resume_and_same_settings(tmp_path, face_dataset):
    run = train(tiny_config(face_dataset, tmp_path / "run", steps=4))
    with pytest.raises(PortraitkitError, match="--resume"):
        train(tiny_config(face_dataset, run, steps=4))
    with pytest.raises(PortraitkitError, match="rank"):
        train(tiny_config(face_dataset, run, steps=8, rank=8, resume=True))


def test_sdxl_with_text_encoders_accumulation_and_prior_preservation(tmp_path, face_dataset):
    from safetensors.torch import load_file

    from portraitkit.models.bases import load_pipeline

    run = train(tiny_config(face_dataset, tmp_path / "run", base="tiny-sdxl", steps=3, train_text_encoder=True,
                            grad_accum=2, batch_size=2, noise_offset=0.05, class_dir=str(tmp_path / "class"),
                            num_class_images=2, optimizer="adamw"))
    assert len(list((tmp_path / "class").glob("*.png"))) == 2  # generated by the base model
    keys = load_file(run / LORA_FILE).keys()
    assert {key.split(".")[0] for key in keys} == {"unet", "text_encoder", "text_encoder_2"}
    kohya_prefixes = {key.split("_")[1] for key in load_file(kohya_file(run))}
    assert kohya_prefixes == {"unet", "te1", "te2"}
    pipe = load_pipeline("tiny-sdxl")
    lora.load(pipe, run)
    assert pipe(prompt="a photo of sks person", num_inference_steps=2, height=64, width=64).images[0].size == (64, 64)


def test_sd15_text_encoder_uses_the_sd1_kohya_name(tmp_path, face_dataset):
    from safetensors.torch import load_file

    run = train(tiny_config(face_dataset, tmp_path / "run", steps=2, train_text_encoder=True))
    prefixes = {key.split("_")[1] for key in load_file(kohya_file(run))}
    assert prefixes == {"unet", "te"}


def test_missing_bitsandbytes_names_the_fix(tmp_path, monkeypatch, face_dataset):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(PortraitkitError, match="pip install -U bitsandbytes.*--optimizer adamw"):
        train(tiny_config(face_dataset, tmp_path / "run", steps=2))


def test_cli_reports_unreachable_base_in_one_sentence(tmp_path, capsys, face_dataset):
    status = main(["train", str(face_dataset), "--out", str(tmp_path / "run"), "--base", "nobody/no-such-model"])
    error = capsys.readouterr().err
    assert status == 2
    assert "nobody/no-such-model" in error and "--base tiny-sd" in error and "Traceback" not in error


def test_cli_explains_a_folder_that_is_not_a_dataset(tmp_path, capsys):
    status = main(["train", str(tmp_path), "--out", str(tmp_path / "run"), "--steps", "2"])
    assert status == 2 and "portraitkit prep" in capsys.readouterr().err


def test_batches_cover_every_image_once_per_epoch():
    order = [batch_indices(seed=3, micro_index=i, batch_size=2, size=5) for i in range(5)]
    flat = [i for batch in order for i in batch]
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert batch_indices(3, 4, 2, 5) == order[4]  # stateless: the same call, the same batch


def test_pickled_weights_are_refused_not_unpickled(tmp_path):
    from portraitkit.models.bases import build_tiny_pipeline, load_pipeline

    build_tiny_pipeline("sd").save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert (tmp_path / "pickled" / "unet" / "diffusion_pytorch_model.bin").is_file()  # the UNet as a pickle
    with pytest.raises(PortraitkitError, match="could not load base model"):
        load_pipeline(str(tmp_path / "pickled"))
