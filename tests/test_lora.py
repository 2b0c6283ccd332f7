"""The LoRA files against their real consumers: every adapted module learns; diffusers' own
`load_lora_weights` renders exactly the in-memory model from the diffusers file (text encoders and
DoRA included, at the newest versions, Colab's and the floors: `.ci/versions`) and the same from
the kohya file; ComfyUI's DoRA formula gives peft's weights from the kohya file; the kohya header
names the base and the run as A1111's Lora tab needs; the real-size key sets are the standard ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from portraitkit.models import families, kohya, lora
from portraitkit.models.lora import LORA_FILE, kohya_file
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
    start = families.of(initial).kohya_state_dict(lora.lora_layers(initial, 1.0, True), 4, lora.models(initial), torch.float32)
    trained = load_file(kohya_file(run))
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
        # huggingface/diffusers#13984, fixed in 0.40: the README sends diffusers users to the diffusers file
        pytest.skip("diffusers before 0.40 cannot load any kohya text-encoder LoRA into transformers 5's CLIPTextModel")
    # diffusers' kohya loader raises on any key it cannot rename; every stem must become a layer.
    pipe.load_lora_weights(str(run), weight_name=kohya_file(run).name)
    from_kohya = _render(pipe)
    stems = {key.split(".", 1)[0] for key in load_file(kohya_file(run))}
    assert _adapted(pipe) == len(stems)
    assert (from_diffusers - plain).abs().max() > 1e-3  # the LoRA does something...
    assert (from_kohya - from_diffusers).abs().max() < 1e-5  # ...and the same thing from either file


def test_sdxl_text_encoder_1_last_layer_is_not_adapted(text_encoder_run):
    from safetensors.torch import load_file

    base, run = text_encoder_run
    keys = load_file(kohya_file(run)).keys()
    layers = 4  # the tiny text encoders' depth
    last = {k for k in keys if f"_encoder_layers_{layers - 1}_" in k}
    if base == "tiny-sdxl":
        assert last and all(k.startswith("lora_te2_") for k in last)  # encoder 2's pooled output uses it
    else:
        assert last and all(k.startswith("lora_te_") for k in last)


def _magnitudes(pipe) -> dict:
    """Every DoRA magnitude in the pipeline, by component and module (adapter names differ by loader)."""
    return {(component, name.split(".lora_magnitude_vector")[0]): parameter.detach().clone()
            for component, model in lora.models(pipe).items() for name, parameter in model.named_parameters()
            if "lora_magnitude_vector" in name}


@pytest.mark.parametrize("base, dora", [("tiny-sd", False), ("tiny-sd", True), ("tiny-sdxl", True)],
                         ids=["sd-lora", "sd-dora", "sdxl-dora"])  # SDXL's DoRA case covers its keys and the magnitudes
def test_the_diffusers_file_loads_with_diffusers_own_call_as_the_in_memory_model(base, dora, tmp_path, adapted_run):
    """Colab's diffusers 0.39 raised IndexError on any text-encoder file (diffusers#13984), and
    transformers 5 re-initialised the text encoders' DoRA magnitudes without a word."""
    from portraitkit.models.bases import load_pipeline

    run, trained = adapted_run(tmp_path / "run", base, dora, precision="fp32")
    expected, plain = _render(trained), _render(load_pipeline(base))
    assert (expected - plain).abs().max() > 1e-2  # the LoRA (and the text encoders' part) does something
    for load in (lambda pipe: pipe.load_lora_weights(str(run), weight_name=LORA_FILE),  # what the README tells users
                 lambda pipe: lora.load(pipe, run)):  # what `sample` and validation use
        pipe = load_pipeline(base)
        load(pipe)
        assert (_render(pipe) - expected).abs().max() < 1e-4
        magnitudes, wanted = _magnitudes(pipe), _magnitudes(trained)
        assert magnitudes.keys() == wanted.keys() and all((magnitudes[k] - wanted[k]).abs().max() < 1e-6 for k in wanted)
    if dora:  # the default fp16 file: the same model, up to fp16's rounding of the LoRA
        lora.save(trained, run, 4, None, train_text_encoder=True, precision="fp16")
        pipe = load_pipeline(base)
        pipe.load_lora_weights(str(run), weight_name=LORA_FILE)
        assert (_render(pipe) - expected).abs().max() < 0.01 * (expected - plain).abs().max()


def test_sample_renders_a_text_encoder_dora_run_as_trained(tmp_path, adapted_run):
    import numpy as np
    import torch
    from diffusers import EulerDiscreteScheduler
    from PIL import Image

    from portraitkit.sample.render import SampleConfig, sample

    run, trained = adapted_run(tmp_path / "run", "tiny-sd", dora=True, precision="fp32")
    made = sample(SampleConfig(run_dir=str(run), out_dir=str(tmp_path / "out"), styles=["studio"], per_style=1, steps=2,
                               sampler="euler", token="sks", class_word="person"))[0]
    trained.scheduler = EulerDiscreteScheduler.from_config(trained.scheduler.config)
    expected = trained(made["prompt"], negative_prompt=made["negative_prompt"], num_inference_steps=2, guidance_scale=made["guidance_scale"],
                       height=64, width=64, generator=torch.Generator().manual_seed(0)).images[0]
    rendered = np.asarray(Image.open(tmp_path / "out" / made["file"]), dtype=np.int16)
    assert np.abs(rendered - np.asarray(expected, dtype=np.int16)).max() <= 1


def test_the_kohya_header_names_the_base_the_run_and_its_facts(text_encoder_run):
    from safetensors import safe_open
    from safetensors.torch import load_file

    from portraitkit.models.bases import resolve_base

    base, run = text_encoder_run
    path = kohya_file(run)
    assert path.name == f"{run.name}.safetensors"  # several people's LoRAs side by side in models/Lora
    with safe_open(path, "pt") as handle:
        meta = handle.metadata()
    # A1111's Lora tab lists a LoRA for SDXL models when this starts with "sdxl_", else as SD1.
    assert meta["ss_base_model_version"] == {"tiny-sd": "sd_v1", "tiny-sdxl": "sdxl_base_v1-0"}[base]
    assert meta["ss_output_name"] == meta["modelspec.title"] == run.name
    assert (meta["ss_network_module"], meta["ss_network_dim"], meta["ss_network_alpha"]) == ("networks.lora", "4", "4.0")
    assert (meta["ss_resolution"], meta["ss_steps"], float(meta["ss_learning_rate"]), meta["ss_num_train_images"]) == ("(64, 64)", "3", 1e-2, "2")
    assert meta["modelspec.trigger_phrase"] == "sks person"
    assert json.loads(meta["ss_tag_frequency"]) == {"dataset": {"a photo of sks person": 2}}
    weights = next((Path(resolve_base(base).source) / "unet").glob("*.safetensors"))
    assert meta["ss_sd_model_name"] == base and meta["ss_new_sd_model_hash"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # fp16 by default, as kohya saves: both files
    assert {tensor.dtype for file in (path, run / LORA_FILE) for tensor in load_file(file).values()} == {__import__("torch").float16}


def test_every_persons_lora_gets_its_own_name(tmp_path):
    """A1111 and ComfyUI list LoRAs by file name: the demo's and the class's `run` folders take the
    name of the person's folder they sit in, and best/ is named after its run."""
    from portraitkit.models.runs import run_name

    for run in ("alice", "demo/run", "class/ada/run", "class/grace/run"):
        (tmp_path / run / "best").mkdir(parents=True)
        (tmp_path / run / "config.json").write_text("{}")
    names = [run_name(tmp_path / run / sub) for run in ("alice", "demo/run", "class/ada/run", "class/grace/run") for sub in ("", "best")]
    assert names == ["alice", "alice-best", "demo", "demo-best", "ada", "ada-best", "grace", "grace-best"]


def test_the_diffusers_file_carries_the_config_diffusers_writes(text_encoder_run):
    import diffusers
    from packaging import version

    base, run = text_encoder_run
    if version.parse(diffusers.__version__) < version.parse("0.35"):
        pytest.skip("diffusers before 0.35 neither writes nor reads the adapter config")
    *_, metadata = diffusers.StableDiffusionPipeline.lora_state_dict(str(run), weight_name=LORA_FILE, return_lora_metadata=True)
    components = ["unet", "text_encoder"] + (["text_encoder_2"] if base == "tiny-sdxl" else [])
    assert {key.split(".")[0] for key in metadata} == set(components)
    assert all(metadata[f"{c}.r"] == metadata[f"{c}.lora_alpha"] == 4 and metadata[f"{c}.use_dora"] is False for c in components)
    assert "encoder.layers.0.self_attn.q_proj" in metadata["text_encoder.target_modules"]


# --- DoRA in ComfyUI ----------------------------------------------------------------------------


def comfyui_dora_weight(weight, up, down, alpha, dora_scale, strength=1.0):
    """ComfyUI's weight decomposition as its behaviour is described (shared FACTS.md, comfy/weight_adapter),
    written here from that description: for a `dora_scale` of shape (out, 1),
    W' = (W + dW) * dora_scale / (||W|| + eps), ||W|| the ORIGINAL weight's row norms, eps its dtype's;
    a strength s gives W + s (W' - W)."""
    import torch

    delta = alpha / down.shape[0] * (up @ down)
    norm = weight.norm(dim=1, keepdim=True) + torch.finfo(weight.dtype).eps
    return weight + strength * ((weight + delta) * (dora_scale / norm) - weight)


def _adapted_shapes(name: str) -> set[tuple[int, int]]:
    """(out, in) of every weight a LoRA adapts in the real-size base `name` (meta device)."""
    import torch

    from portraitkit.models.architectures import ARCHITECTURES, build_component

    arch, shapes = ARCHITECTURES[name], set()
    with torch.device("meta"):
        for component in ("unet", "text_encoder", "text_encoder_2"):
            if component in arch:
                targets = lora.UNET_TARGETS if component == "unet" else lora.TEXT_ENCODER_TARGETS
                shapes |= {tuple(m.weight.shape) for n, m in build_component(arch, component).named_modules()
                           if isinstance(m, torch.nn.Linear) and any(n.endswith("." + t) for t in targets)}
    return shapes


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
@pytest.mark.parametrize("rank", [4, 16])
def test_comfyui_renders_the_dora_kohya_file_as_peft_does(name, rank):
    import torch
    from peft.utils import get_peft_model_state_dict

    family = {"sd15": "sd", "sdxl": "sdxl"}[name]
    shapes = _adapted_shapes(name)
    assert len(shapes) >= 4  # every distinct (out, in) of the real architecture: 320x320 ... 1280x2048
    torch.manual_seed(rank)
    for out_features, in_features in sorted(shapes):
        holder = torch.nn.ModuleDict({"proj": torch.nn.Linear(in_features, out_features, bias=False)})
        torch.nn.init.normal_(holder.proj.weight, std=in_features ** -0.5)
        lora.add_adapters(holder, rank, ["proj"], use_dora=True)
        with torch.no_grad():  # a strong LoRA: dW about a tenth of W, magnitudes 10% off the row norms
            holder.proj.lora_B["default"].weight.normal_(0, 0.1 * (rank / in_features) ** 0.5)
            magnitude = holder.proj.lora_magnitude_vector["default"].weight
            magnitude.mul_(1 + 0.1 * torch.randn_like(magnitude))
            peft_weight = holder.proj(torch.eye(in_features)).T  # what peft computes, whatever its formula
        tensors = families.named(family).kohya_state_dict({"unet": get_peft_model_state_dict(holder)}, rank, {"unet": holder},
                                                          torch.float32)
        up, down, alpha = (tensors[f"lora_unet_proj.{t}"] for t in ("lora_up.weight", "lora_down.weight", "alpha"))
        weight = holder.proj.base_layer.weight.detach()
        comfy = comfyui_dora_weight(weight, up, down, alpha.item(), tensors["lora_unet_proj.dora_scale"])
        scale = peft_weight.abs().max()
        assert (comfy - peft_weight).abs().max() / scale < 1e-5, (out_features, in_features)
        # the raw magnitude as dora_scale (what the file held before) is visibly off in ComfyUI
        assert (comfyui_dora_weight(weight, up, down, alpha.item(), magnitude.detach().reshape(-1, 1)) - peft_weight).abs().max() / scale > 1e-3


# --- real size ----------------------------------------------------------------------------------


def _real_size_kohya(name: str, rank: int = 4) -> dict:
    """The kohya tensors (on the meta device) of a LoRA on the real-size base `name`."""
    from types import SimpleNamespace

    import torch

    from portraitkit.models.architectures import ARCHITECTURES, build_component

    arch = ARCHITECTURES[name]
    with torch.device("meta"):
        parts = {c: build_component(arch, c) for c in ("unet", "text_encoder", "text_encoder_2") if c in arch}
        family = families.named(arch["family"])
        # the pipeline's parts under its class's name: what `families.of` reads
        pipe = type(family.pipeline, (SimpleNamespace,), {})(vae=torch.nn.Identity(), **{"text_encoder_2": None, **parts})
        lora.add_to_pipeline(pipe, rank, None, train_text_encoder=True)
        layers = lora.lora_layers(pipe, 1.0, True)
        return family.kohya_state_dict(layers, rank, lora.models(pipe), torch.float32)


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
