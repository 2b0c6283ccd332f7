"""Output preservation (`train --output-preservation`): the class caption's prediction with the
LoRA pulled toward the base model's, so the person does not leak into every face.

On the tiny base (random weights) this proves the mechanics, never likeness: its text encoder
barely tells "a photo of sks person" from "a photo of a person" (their embeddings differ by about
6%), so the effect test trains on the bare trigger word "sks", whose embedding differs from the
class prompt's by about 30%, as a real encoder's do."""

from __future__ import annotations

import pytest

from portraitkit.train.objective import adapters_off, class_caption

CLASS_PROMPT = "a photo of a person"


def test_the_class_caption_replaces_the_trigger_phrase():
    assert class_caption("a photo of sks person, warm light, smiling", CLASS_PROMPT) == "a photo of a person, warm light, smiling"
    assert class_caption("a photo of sks person", CLASS_PROMPT) == CLASS_PROMPT


def test_adapters_off_is_the_base_model_and_training_resumes_after():
    import torch

    from portraitkit.models import lora
    from portraitkit.models.bases import load_pipeline

    base = load_pipeline("tiny-sd").unet
    unet = load_pipeline("tiny-sd").unet
    trainable = lora.add_adapters(unet, 4, lora.UNET_TARGETS, use_dora=True)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a LoRA that has learned something
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        plain, with_lora = base(x, t, text).sample, unet(x, t, text).sample
        with adapters_off(unet):
            without = unet(x, t, text).sample
        again = unet(x, t, text).sample
    assert (with_lora - plain).abs().max() > 1e-2
    assert torch.allclose(without, plain, atol=1e-5)  # LoRA and DoRA magnitude both off
    assert torch.equal(again, with_lora) and all(p.requires_grad for p in trainable)


@pytest.fixture(scope="module")
def trigger_dataset(tmp_path_factory, face_dataset):
    import json
    import shutil

    folder = tmp_path_factory.mktemp("sks")
    for row in map(json.loads, (face_dataset / "metadata.jsonl").read_text().splitlines()):
        shutil.copy(face_dataset / row["file_name"], folder / row["file_name"])
        with (folder / "metadata.jsonl").open("a") as metadata:
            metadata.write(json.dumps({"file_name": row["file_name"], "text": "sks"}) + "\n")
    return folder


def lora_effects(run) -> dict[str, float]:
    """How much the LoRA changes the UNet's prediction for the trigger and for the class prompt:
    the same noisy latents and timesteps with the LoRA and without it."""
    import torch

    from portraitkit.models import lora
    from portraitkit.models.bases import load_pipeline
    from portraitkit.train.cache import encode_text

    pipe = load_pipeline("tiny-sd")
    lora.load(pipe, run)
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn((4, 4, 8, 8), generator=generator), torch.tensor([100, 300, 600, 900])
    effects = {}
    with torch.no_grad():
        for name, prompt in [("trigger", "sks"), ("class", CLASS_PROMPT)]:
            text = encode_text(pipe, [prompt] * 4, "cpu")["embeds"]
            with_lora = pipe.unet(x, t, text).sample
            with adapters_off(pipe.unet):
                without = pipe.unet(x, t, text).sample
            effects[name] = float((with_lora - without).abs().mean())
    return effects


def test_output_preservation_keeps_the_class_prompt_as_the_base_draws_it(tmp_path, trigger_dataset):
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    def run(name, **settings):
        return train(TrainConfig(dataset_dir=str(trigger_dataset), out_dir=str(tmp_path / name), base="tiny-sd", steps=30,
                                 rank=4, lr=1e-2, optimizer="adamw", checkpoint_every=0, validate=False,
                                 class_prompt=CLASS_PROMPT, **settings))

    plain, kept = lora_effects(run("plain")), lora_effects(run("kept", output_preservation=True))
    # Without it the LoRA changes both prompts alike: the person leaks into "a photo of a person".
    assert plain["class"] > 0.5 * plain["trigger"]
    assert kept["class"] <= 0.5 * plain["class"], (plain, kept)
    assert kept["trigger"] >= 0.35 * plain["trigger"], (plain, kept)  # the person is still learned
    assert kept["trigger"] >= 2 * kept["class"], (plain, kept)


def test_the_planner_counts_the_extra_passes():
    from portraitkit.plan.devices import DEVICES
    from portraitkit.plan.estimate import plan_for_training
    from portraitkit.train.config import TrainConfig

    def plan(**settings):
        return plan_for_training(TrainConfig(dataset_dir="d", out_dir="o", base="tiny-sd", **settings), DEVICES["t4"])

    plain, kept = plan(), plan(output_preservation=True)
    # the class caption's pass with gradients (a step at twice the batch) and one more without
    assert 2.1 < kept.flops_per_step / plain.flops_per_step < 2.6
    assert kept.breakdown_gb["training_activations_and_grads"] > plain.breakdown_gb["training_activations_and_grads"]


def test_output_preservation_trains_sdxl_with_its_text_encoders(tmp_path, face_dataset):
    """SDXL's pooled text and size ids, and text encoders that train: the class caption is encoded
    with their LoRA for one pass and without it for the base pass; the term changes what is learned."""
    from safetensors.torch import load_file

    from portraitkit.models.lora import LORA_FILE
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    def run(name, **settings):
        out = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / name), base="tiny-sdxl", steps=2,
                                rank=4, lr=1e-2, optimizer="adamw", checkpoint_every=0, validate=False,
                                train_text_encoder=True, **settings))
        return load_file(out / LORA_FILE)

    plain, kept = run("plain"), run("kept", output_preservation=True)
    assert any(k.startswith("text_encoder_2.") for k in kept) and kept.keys() == plain.keys()
    changed = [k for k in kept if not (kept[k] == plain[k]).all()]
    assert any(k.startswith("unet.") for k in changed) and any(k.startswith("text_encoder") for k in changed)
