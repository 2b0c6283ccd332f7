"""The LoRA files against their real consumers: every adapted module learns, diffusers' own kohya
loader reads the kohya file and renders what the diffusers file renders, and the key sets of the
real-size SD1.5 and SDXL architectures are the standard ones."""

from __future__ import annotations

import json

import pytest

from portraitkit.models import lora
from portraitkit.models.lora import KOHYA_FILE
from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import load_for_training, train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, portrait_path):
    from PIL import Image

    folder = tmp_path_factory.mktemp("dataset")
    photo = Image.open(portrait_path).convert("RGB")
    rows = []
    for index, (left, top, size) in enumerate([(100, 40, 300), (120, 60, 280)]):
        photo.crop((left, top, left + size, top + size)).resize((64, 64), Image.LANCZOS).save(folder / f"face_{index}.png")
        rows.append({"file_name": f"face_{index}.png", "text": "a photo of sks person"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def _config(dataset, out, base) -> TrainConfig:
    # A high learning rate and checkpointing forced on: the case where reentrant checkpointing
    # (transformers 4's default) left the text-encoder LoRA without gradients.
    return TrainConfig(dataset_dir=str(dataset), out_dir=str(out), base=base, steps=3, rank=4, lr=1e-2, text_encoder_lr=1e-2,
                       train_text_encoder=True, gradient_checkpointing=True, optimizer="adamw", checkpoint_every=0,
                       validation_steps=1, validation_seeds=(0,))


@pytest.fixture(scope="module", params=["tiny-sd", "tiny-sdxl"])
def text_encoder_run(request, tmp_path_factory, dataset):
    return request.param, train(_config(dataset, tmp_path_factory.mktemp("run"), request.param))


def test_every_adapted_module_learns_with_checkpointing_on(text_encoder_run, dataset, tmp_path):
    import torch
    from safetensors.torch import load_file

    base, run = text_encoder_run
    # The same seed gives the same initial LoRA (A random, B zero), named as in the file.
    initial, _ = load_for_training(_config(dataset, tmp_path, base), torch.float32)
    start = lora.kohya_state_dict(lora.lora_layers(initial, 1.0, True), lora.family(initial), 4)
    trained = load_file(run / KOHYA_FILE)
    assert trained.keys() == start.keys()
    stems = {key.split(".", 1)[0] for key in trained}
    assert {stem.split("_")[1] for stem in stems} == ({"unet", "te"} if base == "tiny-sd" else {"unet", "te1", "te2"})
    for stem in stems:
        assert start[f"{stem}.lora_up.weight"].abs().max() == 0
        assert trained[f"{stem}.lora_up.weight"].abs().max() > 0, f"{stem}: B got no gradient"
        assert (trained[f"{stem}.lora_down.weight"] - start[f"{stem}.lora_down.weight"]).abs().max() > 0, f"{stem}: A got no gradient"


def _render(pipe, seed=0):
    import torch

    return pipe(prompt="a photo of sks person", num_inference_steps=2, height=64, width=64, output_type="latent",
                generator=torch.Generator().manual_seed(seed)).images


def _adapted(pipe) -> int:
    modules = [pipe.unet, *lora.text_encoders(pipe)]
    return sum(1 for module in modules for _, m in module.named_modules() if hasattr(m, "lora_A") and len(m.lora_A))


def test_diffusers_reads_the_kohya_file_whole_and_renders_the_same(text_encoder_run):
    import diffusers
    from packaging import version
    from safetensors.torch import load_file

    from portraitkit.models.bases import load_pipeline

    base, run = text_encoder_run
    pipe = load_pipeline(base)
    plain = _render(pipe)
    lora.load(pipe, run)  # diffusers format
    from_diffusers = _render(pipe)
    pipe = load_pipeline(base)
    if not hasattr(pipe.text_encoder, "text_model") and version.parse(diffusers.__version__) < version.parse("0.40"):
        pytest.skip("diffusers before 0.40 cannot load any kohya text-encoder LoRA into transformers 5's CLIPTextModel")
    # diffusers' kohya loader raises on any key it cannot rename; every stem must become a layer.
    pipe.load_lora_weights(str(run), weight_name=KOHYA_FILE)
    from_kohya = _render(pipe)
    stems = {key.split(".", 1)[0] for key in load_file(run / KOHYA_FILE)}
    assert _adapted(pipe) == len(stems)
    assert (from_diffusers - plain).abs().max() > 1e-3  # the LoRA does something...
    assert (from_kohya - from_diffusers).abs().max() < 1e-5  # ...and the same thing from either file


def test_sdxl_text_encoder_1_last_layer_is_not_adapted(text_encoder_run):
    from safetensors.torch import load_file

    base, run = text_encoder_run
    keys = load_file(run / KOHYA_FILE).keys()
    layers = 4  # the tiny text encoders' depth
    last = {k for k in keys if f"_encoder_layers_{layers - 1}_" in k}
    if base == "tiny-sdxl":
        assert last and all(k.startswith("lora_te2_") for k in last)  # encoder 2's pooled output uses it
    else:
        assert last and all(k.startswith("lora_te_") for k in last)


# --- real size ----------------------------------------------------------------------------------


def _real_size_kohya(name: str, rank: int = 4) -> dict:
    """The kohya tensors (on the meta device) of a LoRA on the real-size base `name`."""
    from types import SimpleNamespace

    import torch

    from portraitkit.models.architectures import ARCHITECTURES, build_component

    arch = ARCHITECTURES[name]
    with torch.device("meta"):
        parts = {c: build_component(arch, c) for c in ("unet", "text_encoder", "text_encoder_2") if c in arch}
        pipe = SimpleNamespace(vae=torch.nn.Identity(), **{"text_encoder_2": None, **parts})
        lora.add_to_pipeline(pipe, rank, None, train_text_encoder=True)
        layers = lora.lora_layers(pipe, 1.0, True)
    return lora.kohya_state_dict(layers, arch["family"], rank)


@pytest.mark.parametrize("name, unet_parameters, encoder_layers", [
    ("sd15", 797_184, {"lora_te": 12}),  # FACTS.md: LoRA parameters at rank 4 from the architectures
    ("sdxl", 5_806_080, {"lora_te1": 11, "lora_te2": 32}),  # encoder 1's last (12th) layer is dead weight
])
def test_real_size_key_sets_are_the_standard_ones(name, unet_parameters, encoder_layers):
    import torch

    kohya = _real_size_kohya(name)
    stems = {key.split(".", 1)[0] for key in kohya}
    # Each stem has its two matrices and its alpha, and nothing else.
    assert len(kohya) == 3 * len(stems)
    assert all({f"{s}.lora_down.weight", f"{s}.lora_up.weight", f"{s}.alpha"} <= kohya.keys() for s in stems)

    # UNet: exactly the attention projections of the real architecture, in kohya's spelling.
    from portraitkit.models.architectures import ARCHITECTURES, build_component

    with torch.device("meta"):
        unet = build_component(ARCHITECTURES[name], "unet")  # without adapters
    expected_unet = {"lora_unet_" + n.replace(".", "_") for n, m in unet.named_modules()
                     if isinstance(m, torch.nn.Linear) and n.endswith((".to_q", ".to_k", ".to_v", ".to_out.0"))}
    assert {s for s in stems if s.startswith("lora_unet_")} == expected_unet
    assert sum(kohya[f"{s}.lora_down.weight"].numel() + kohya[f"{s}.lora_up.weight"].numel() for s in expected_unet) == unet_parameters

    # Text encoders: the names A1111, ComfyUI and kohya's scripts use, whatever transformers calls them.
    expected_text = {f"{prefix}_text_model_encoder_layers_{i}_self_attn_{p}" for prefix, count in encoder_layers.items()
                     for i in range(count) for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert {s for s in stems if not s.startswith("lora_unet_")} == expected_text
