"""SDXL as users run it: no fp16 autocast around the VAE, a guard against NaN/black decodes,
--vae, and refusing to upscale a dataset prepared below the training size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from portraitkit.models.bases import decode_problem, load_pipeline
from portraitkit.core.errors import PortraitkitError
from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, portrait_path):
    from PIL import Image

    folder = tmp_path_factory.mktemp("dataset")
    Image.open(portrait_path).convert("RGB").crop((100, 40, 400, 340)).resize((64, 64), Image.LANCZOS).save(folder / "face.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "face.png", "text": "a photo of sks person"}) + "\n")
    return folder


def _nan(decoded):
    (decoded[0] if isinstance(decoded, tuple) else decoded.sample).fill_(float("nan"))
    return decoded


def test_the_guard_names_nan_and_black_decodes_and_passes_real_images():
    image = np.random.default_rng(0).random((1, 8, 8, 3))
    assert decode_problem(image) is None
    assert "NaN" in decode_problem(np.where(image > 0.5, np.nan, image)) and "--vae" in decode_problem(np.zeros((1, 8, 8, 3)))
    assert "all-black" in decode_problem(np.zeros((2, 8, 8, 3)))


def test_validation_decodes_outside_autocast_and_records_a_broken_decode(tmp_path, dataset, monkeypatch, capsys):
    """Even inside an autocast region (as a mixed-precision loop is), the VAE decodes without it;
    a NaN decode is said, and the step is not scored as if it were a picture."""
    import torch

    from portraitkit.train import validate
    from portraitkit.train.cache import load_examples
    from portraitkit.train.placement import Placement

    pipe = load_pipeline("tiny-sdxl")
    seen = []
    decode = type(pipe.vae).decode

    def spying_decode(self, latents, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return _nan(decode(self, latents, *args, **kwargs))  # what SDXL's VAE gives in fp16

    monkeypatch.setattr(type(pipe.vae), "decode", spying_decode)
    config = TrainConfig(dataset_dir=str(dataset), out_dir=str(tmp_path), base="tiny-sdxl", steps=1,
                         validation_steps=1, validation_seeds=(0,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        validate.run_validation(pipe, Placement(pipe, torch.device("cpu")), config, load_examples(str(dataset)), 64, tmp_path, 1)
    assert seen and not any(seen)
    assert "NaN" in capsys.readouterr().out
    row = json.loads((tmp_path / "identity.json").read_text())["steps"][0]
    assert "VAE decoded NaN" in row["reason"] and row["likeness"] is None


def test_vae_option_replaces_the_base_vae(tmp_path):
    import torch
    from diffusers import AutoencoderKL

    base = load_pipeline("tiny-sdxl")
    torch.manual_seed(7)  # the same architecture with other weights: a stand-in for the fp16-fixed VAE
    other = AutoencoderKL.from_config(base.vae.config)
    other.save_pretrained(tmp_path / "vae")
    pipe = load_pipeline("tiny-sdxl", vae=str(tmp_path / "vae"))
    for name, tensor in other.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[name], tensor), name
    assert not torch.equal(pipe.vae.state_dict()[name], base.vae.state_dict()[name])
    with pytest.raises(PortraitkitError, match="not a diffusers VAE folder"):
        load_pipeline("tiny-sdxl", vae=str(tmp_path))


def test_sampling_refuses_to_save_a_nan_decode(tmp_path, dataset, monkeypatch):
    from diffusers import AutoencoderKL

    from portraitkit.sample.render import SampleConfig, sample

    run = train(TrainConfig(dataset_dir=str(dataset), out_dir=str(tmp_path / "run"), base="tiny-sd", steps=1, rank=4,
                            optimizer="adamw", checkpoint_every=0, validation_steps=1, validation_seeds=(0,)))
    decode = AutoencoderKL.decode

    def nan_decode(self, latents, *args, **kwargs):
        return _nan(decode(self, latents, *args, **kwargs))

    monkeypatch.setattr(AutoencoderKL, "decode", nan_decode)
    with pytest.raises(PortraitkitError, match="VAE decoded NaN.*--vae"):
        sample(SampleConfig(run_dir=str(run), out_dir=str(tmp_path / "out"), styles=["studio"], per_style=1, steps=1))
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_dataset_below_the_training_size_is_refused_with_the_fix(tmp_path, dataset):
    with pytest.raises(PortraitkitError, match=r"prepared at 64 px.*`portraitkit prep PHOTOS --out DATASET --resolution 128`"):
        train(TrainConfig(dataset_dir=str(dataset), out_dir=str(tmp_path / "run"), base="tiny-sd", resolution=128))
    assert not (tmp_path / "run" / "pytorch_lora_weights.safetensors").exists()


def test_the_unet_gets_each_photos_own_crop_size_uncropped(tmp_path):
    import torch
    from PIL import Image

    from portraitkit.train.cache import size_time_ids
    from portraitkit.models.conditioning import unet_conditioning

    examples = [{"image": Image.new("RGB", (128, 128)), "original_size": [412, 412], "crop_top_left": [0, 0]},
                {"image": Image.new("RGB", (128, 128)), "original_size": None, "crop_top_left": None}]  # an older dataset
    time_ids = size_time_ids(examples, 64)
    assert time_ids.tolist() == [[412, 412, 0, 0, 64, 64], [64, 64, 0, 0, 64, 64]]
    cond = {"embeds": torch.zeros(2, 77, 64), "pooled": torch.zeros(2, 32), "time_ids": time_ids}
    assert torch.equal(unet_conditioning(cond, 64, torch.float32)["added_cond_kwargs"]["time_ids"], time_ids)
    del cond["time_ids"]  # what the UNet gets without a record: made at the training size, uncropped
    assert unet_conditioning(cond, 64, torch.float32)["added_cond_kwargs"]["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
