"""Sampling with a LoRA trained on the offline tiny base: recipes, manifest, determinism, scale 0."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portraitkit.cli import main
from portraitkit.core.errors import PortraitkitError
from portraitkit.models import lora
from portraitkit.sample.render import ADAPTER, SampleConfig, person_words, read_parameters, sample

STEPS = 3  # denoising steps: the tiny base's pictures are noise whatever the count


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, portrait_path):
    """A tiny-sd LoRA trained a few steps (at a high rate, so it visibly changes the images)."""
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    dataset = tmp_path_factory.mktemp("dataset")
    photo = Image.open(portrait_path).convert("RGB")
    rows = []
    for index, (left, top, size) in enumerate([(100, 40, 300), (120, 60, 280), (80, 30, 340)]):
        photo.crop((left, top, left + size, top + size)).resize((64, 64), Image.LANCZOS).save(dataset / f"{index}.png")
        rows.append({"file_name": f"{index}.png", "text": "a photo of zwx woman" + (", close-up" if index else "")})
    (dataset / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(dataset_dir=str(dataset), out_dir=str(out), base="tiny-sd", steps=4, rank=4, lr=1e-2,
                             optimizer="adamw", checkpoint_every=0, validation_steps=1, validation_seeds=(0,)))


@pytest.fixture(scope="module")
def sampled(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("images")
    code = main(["sample", str(run_dir), "--out", str(out), "--styles", "studio,black_and_white", "--per-style", "2",
                 "--seed", "7", "--steps", str(STEPS)])
    assert code == 0
    return out


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_manifest_lists_every_image_with_its_recipe(sampled):
    manifest = json.loads((sampled / "manifest.json").read_text())
    assert [(e["style"], e["seed"]) for e in manifest] == [("studio", 7), ("studio", 8), ("black_and_white", 7), ("black_and_white", 8)]
    for entry in manifest:
        assert {"file", "style", "seed", "prompt", "negative_prompt", "lora_scale", "steps", "guidance_scale"} <= entry.keys()
        assert (sampled / entry["file"]).is_file() and Image.open(sampled / entry["file"]).size == (64, 64)
        # The token and class word were read from the run's dataset captions.
        assert "zwx woman" in entry["prompt"] and entry["steps"] == STEPS and entry["lora_scale"] == 1.0
    assert "sepia" in manifest[2]["negative_prompt"]  # the style's own negative words
    for style in ("studio", "black_and_white"):
        [grid] = {entry["grid"] for entry in manifest if entry["style"] == style}
        assert grid == f"grids/{style}_steps{STEPS}.png"  # named like its images: another batch gets its own
        # 2 images side by side, enlarged to a captioned cell (128 px), each tile's seed and strength under it
        picture = np.asarray(Image.open(sampled / grid).convert("L"))
        assert picture.shape == (128 + 18, 256) and (picture[128:] < 100).sum() > 50  # the captions are written


# AUTOMATIC1111's infotext format, as its modules/infotext_utils.py reads it (written anew here,
# not imported from portraitkit): the last line holds the settings when it has three or more
# `Key: value` pairs; a quoted value is JSON; lines before "Negative prompt:" are the prompt.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_LORA = re.compile(r"<lora:([^:>]+):([^:>]+)>")


def a1111_parse(text: str) -> dict:
    *lines, last = text.strip().split("\n")
    if len(A1111_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in A1111_PARAM.findall(last):
        result[key] = json.loads(value) if value[:1] == '"' and value[-1:] == '"' else value
    return result


def a1111_addnet_hash(path) -> str:
    """A1111's modules/hashes.py addnet_hash_safetensors, first 12 digits (its `shorthash`)."""
    data = open(path, "rb").read()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]


def test_png_carries_the_recipe_in_automatic1111_layout(sampled, run_dir):
    entry = json.loads((sampled / "manifest.json").read_text())[1]
    parsed = a1111_parse(Image.open(sampled / entry["file"]).text["parameters"])
    # The LoRA tag is in A1111's prompt; the manifest keeps the prompt diffusers used.
    assert A1111_LORA.findall(parsed["Prompt"]) == [(run_dir.name, "1")]  # the kohya file's stem, the run's name
    assert A1111_LORA.sub("", parsed["Prompt"]).strip() == entry["prompt"] and "<lora:" not in entry["prompt"]
    assert parsed["Negative prompt"] == entry["negative_prompt"]
    assert (parsed["Steps"], parsed["Sampler"], parsed["Schedule type"]) == (str(STEPS), "DPM++ 2M", "Karras")
    assert (parsed["CFG scale"], parsed["Seed"], parsed["Size"], parsed["Model"]) == ("7.0", "8", "64x64", "tiny-sd")
    name, lora_hash = parsed["Lora hashes"].split(": ")
    assert name == run_dir.name and lora_hash == a1111_addnet_hash(run_dir / f"{run_dir.name}.safetensors")
    from portraitkit.models.bases import resolve_base

    weights = next((Path(resolve_base("tiny-sd").source) / "unet").glob("*.safetensors"))
    assert parsed["Model hash"] == hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    assert parsed["Style"] == "studio" and parsed["Version"].startswith("portraitkit ")
    # portraitkit's own reader agrees with A1111's.
    ours = read_parameters(sampled / entry["file"])
    assert all(ours[key] == parsed[key] for key in parsed if key not in ("Prompt", "Negative prompt"))


def test_same_seed_gives_the_same_image_and_a_rerun_keeps_finished_ones(run_dir, sampled, tmp_path):
    again = sample(SampleConfig(run_dir=str(run_dir), out_dir=str(tmp_path), styles=["studio"], per_style=2, seed=7, steps=STEPS))
    assert np.array_equal(pixels(tmp_path / again[0]["file"]), pixels(sampled / again[0]["file"]))
    assert not np.array_equal(pixels(tmp_path / again[0]["file"]), pixels(tmp_path / again[1]["file"]))

    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")}
    sample(SampleConfig(run_dir=str(run_dir), out_dir=str(tmp_path), styles=["studio"], per_style=2, seed=7, steps=STEPS))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.png")} == before


@pytest.fixture(scope="module")
def dora_run(tmp_path_factory, adapted_run):
    """A tiny-sd DoRA run, text encoder included (set, not trained: `adapted_run`)."""
    return adapted_run(tmp_path_factory.mktemp("dora") / "dora_run", "tiny-sd", dora=True)[0]


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_strength_0_is_the_base_model_and_0_5_lies_between(kind, run_dir, dora_run, tmp_path):
    """Strength as A1111 and ComfyUI read `<lora:NAME:S>`: weights W + s (W' - W). peft's adapter
    weight alone scales only DoRA's low-rank part, so DoRA at 0 was not the base."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from portraitkit.models.bases import load_pipeline

    run = run_dir if kind == "lora" else dora_run
    loaded, images, files = {}, {}, {}
    for strength in (0.0, 0.5, 1.0):  # one pipeline, its strength changed between images (notebook 05's dials)
        made = sample(SampleConfig(run_dir=str(run), out_dir=str(tmp_path / str(strength)), styles=["studio"], per_style=1,
                                   seed=7, steps=STEPS, lora_scale=strength, token="zwx", class_word="woman"), loaded=loaded)[0]
        files[strength] = made["file"]
        images[strength] = pixels(tmp_path / str(strength) / made["file"])
    assert f"<lora:{run.name}:0.5>" in read_parameters(tmp_path / "0.5" / files[0.5])["prompt"]

    # The base model alone, straight through diffusers, with no LoRA ever loaded.
    pipe = load_pipeline("tiny-sd")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    base = pipe(made["prompt"], negative_prompt=made["negative_prompt"], num_inference_steps=STEPS, guidance_scale=made["guidance_scale"],
                height=64, width=64, generator=torch.Generator().manual_seed(7)).images[0]
    base = np.asarray(base, dtype=np.int16)
    assert np.array_equal(images[0.0], base)

    def distance(a, b):
        return float(np.abs(a - b).mean())

    assert distance(images[1.0], base) > 1  # at strength 1 the LoRA shows
    assert 0 < distance(images[0.5], base) < distance(images[1.0], base)
    assert 0 < distance(images[0.5], images[1.0]) < distance(base, images[1.0])

    # and in the weights: halfway between the base and the trained weight, for every adapted layer
    import peft

    pipe = loaded["pipe"]
    layers = [m for m in pipe.unet.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    x = torch.randn(3, layers[0].in_features)
    with torch.no_grad():
        lora.set_strength(pipe, ADAPTER, 1.0)
        trained = layers[0](x)
        lora.set_strength(pipe, ADAPTER, 0.5)
        half = layers[0](x)
    assert torch.allclose(half, (layers[0].base_layer(x) + trained) / 2, atol=1e-5)


def test_token_and_class_word_come_from_the_captions_or_the_user(tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    run = {"settings": {"dataset_dir": str(dataset)}}
    (dataset / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a photo of ohwx man, outdoors"}\n'
                                            '{"file_name": "b.png", "text": "a photo of ohwx man"}\n')
    assert person_words(run) == ("ohwx", "man")
    (dataset / "report.json").write_text(json.dumps({"config": {"token": "sks", "class_word": "person"}}))
    assert person_words(run) == ("sks", "person")  # prep's own record wins over reading captions
    assert person_words(run, class_word="woman") == ("sks", "woman")

    (dataset / "report.json").unlink()
    (dataset / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a photo of ohwx man"}\n'
                                            '{"file_name": "b.png", "text": "a photo of zwx woman"}\n')
    with pytest.raises(PortraitkitError, match="--token and --class-word"):
        person_words(run)


def test_clear_errors_for_a_folder_that_is_not_a_run_and_unknown_styles(run_dir, tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "out"), "--styles", "studio,glamour"]) == 2
    assert "unknown style(s) glamour" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "out"), "--lora", "best"]) == 2
    assert "use --lora final" in capsys.readouterr().err


def test_sdxl_runs_get_the_sdxl_styles_and_can_use_the_best_lora(tmp_path, run_dir):
    import shutil

    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    dataset = tmp_path / "dataset"
    shutil.copytree(json.loads((run_dir / "config.json").read_text())["settings"]["dataset_dir"], dataset)
    xl_run = train(TrainConfig(dataset_dir=str(dataset), out_dir=str(tmp_path / "run"), base="tiny-sdxl", steps=1, rank=4,
                               optimizer="adamw", checkpoint_every=0, validation_steps=1, validation_seeds=(0,)))
    # best/ is written when validation images show the person; the tiny base never draws one.
    (xl_run / "best").mkdir()
    shutil.copy(xl_run / "pytorch_lora_weights.safetensors", xl_run / "best")
    made = sample(SampleConfig(run_dir=str(xl_run), out_dir=str(tmp_path / "out"), styles=["studio"], per_style=1,
                               steps=1, lora="best"))[0]
    assert made["guidance_scale"] == 5.5 and made["prompt"].startswith("A head-and-shoulders studio portrait photograph of zwx woman")
    assert made["lora"].endswith("best/pytorch_lora_weights.safetensors") and made["model"] == "tiny-sdxl"
    assert read_parameters(tmp_path / "out" / made["file"])["Size"] == "64x64"


def test_compare_dials_changes_one_setting_at_a_time(run_dir, tmp_path, monkeypatch):
    import portraitkit.sample.render
    from portraitkit.sample.render import compare_dials

    loads = []
    loader = portraitkit.sample.render.load_for_sampling
    monkeypatch.setattr(portraitkit.sample.render, "load_for_sampling", lambda *args, **kwargs: loads.append(args) or loader(*args, **kwargs))
    config = SampleConfig(run_dir=str(run_dir), out_dir=str(tmp_path / "images"), styles=["studio"], seed=3, steps=STEPS)
    grid = compare_dials(config, tmp_path / "dials", guidance_scales=(2.0, 9.0), lora_scales=(0.0, 1.0))
    assert len(loads) == 1  # four images, one pipeline
    # guidance on top, LoRA strength below, each picture enlarged to 256 px and labelled in the image
    assert grid.width > 2 * 256 and grid.height > 2 * 256
    recipes = {folder.name: json.loads((folder / "manifest.json").read_text())[0] for folder in (tmp_path / "dials").iterdir()}
    assert {r["guidance_scale"] for n, r in recipes.items() if n.startswith("guidance")} == {2.0, 9.0}
    assert {r["lora_scale"] for n, r in recipes.items() if n.startswith("strength")} == {0.0, 1.0}
    assert all(r["style"] == "studio" and r["seed"] == 3 for r in recipes.values())
    # strength 1 at the style's own guidance is exactly the portrait `sample` makes with the same recipe
    [plain] = sample(SampleConfig(run_dir=str(run_dir), out_dir=str(tmp_path / "plain"), styles=["studio"], seed=3,
                                  per_style=1, steps=STEPS))
    assert np.array_equal(pixels(tmp_path / "plain" / plain["file"]), pixels(tmp_path / "dials" / "strength_1" / plain["file"]))
    assert not np.array_equal(pixels(tmp_path / "dials" / "guidance_2" / recipes["guidance_2"]["file"]),
                              pixels(tmp_path / "dials" / "guidance_9" / recipes["guidance_9"]["file"]))


def test_other_settings_never_overwrite_a_portrait_and_the_manifest_stays_true(run_dir, tmp_path):
    """A re-render at another LoRA strength or guidance gets its own name; every manifest row
    describes the file of that name (its PNG recipe says the same)."""
    made = []
    for change in ({}, {"lora_scale": 0.5}, {"guidance_scale": 3.0}):
        made += sample(SampleConfig(run_dir=str(run_dir), out_dir=str(tmp_path), styles=["studio"], per_style=1, seed=7,
                                    steps=STEPS, **change))
    assert [m["file"] for m in made] == [f"studio_seed7_steps{STEPS}.png", f"studio_seed7_lora0.5_steps{STEPS}.png",
                                         f"studio_seed7_cfg3_steps{STEPS}.png"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(e["file"] for e in manifest) == sorted(p.name for p in tmp_path.glob("*.png")) == sorted(m["file"] for m in made)
    for entry in manifest:
        recipe = read_parameters(tmp_path / entry["file"])
        assert (float(recipe["CFG scale"]), f"<lora:{run_dir.name}:{entry['lora_scale']:g}>") == (
            entry["guidance_scale"], re.search(r"<lora:[^>]+>", recipe["prompt"]).group(0))
    assert not np.array_equal(pixels(tmp_path / made[0]["file"]), pixels(tmp_path / made[1]["file"]))


def test_quantize_is_for_klein_and_said_before_loading(run_dir, tmp_path):
    """`sample --quantize nf4` on a Stable Diffusion run is refused in one sentence, before any loading."""
    with pytest.raises(PortraitkitError, match="--quantize nf4 is for FLUX.2"):
        sample(SampleConfig(run_dir=str(run_dir), out_dir=str(tmp_path / "images"), quantize="nf4"))
