"""FLUX.2 [klein] 4B (`--base klein4b`) and its offline toy `tiny-klein`.

The toy base has the real classes (Flux2KleinPipeline, Flux2Transformer2DModel, AutoencoderKLFlux2,
Qwen3ForCausalLM, a Qwen2 tokenizer with a chat template) at toy size with random weights: on it
these tests prove the mechanics (latents, objective, files, resume, sampling) and nothing about
portraits. The real model's sizes are checked on the meta device, its speed and memory on a GPU
are not measured here.
"""

from __future__ import annotations

import functools
import json

import math

import pytest
import torch

from portraitkit.core.errors import PortraitkitError
from portraitkit.models import klein, lora
from portraitkit.models.bases import load_pipeline, resolve_base
from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import train


@functools.lru_cache(maxsize=1)
def _base():
    return load_pipeline("tiny-klein")


def _render(pipe):
    return pipe(prompt="a photo of sks person", height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                generator=torch.Generator().manual_seed(0), output_type="latent").images


def test_tiny_klein_is_built_offline_from_the_real_classes(monkeypatch):
    """Fails if the preset is not the FLUX.2 family, the tokenizer needs the hub, or the chat
    template the pipeline applies is missing."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = resolve_base("tiny-klein")
    assert (spec.family, spec.offline) == ("flux2", True)
    assert resolve_base("klein4b").source == "black-forest-labs/FLUX.2-klein-base-4B"
    pipe = _base()
    assert [type(getattr(pipe, name)).__name__ for name in ("transformer", "vae", "text_encoder", "scheduler")] == [
        "Flux2Transformer2DModel", "AutoencoderKLFlux2", "Qwen3ForCausalLM", "FlowMatchEulerDiscreteScheduler"]
    text = pipe.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                              add_generation_prompt=True, enable_thinking=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert pipe.tokenizer.decode(pipe.tokenizer("a photo, é")["input_ids"]) == "a photo, é"  # byte-level: nothing lost


def test_latents_and_text_are_the_pipelines_own():
    """`klein.encode_images` must equal the pipeline's reference-image encoding (patches, then the
    VAE's batch-norm statistics), and `encode_prompts` its prompt encoding; a wrong patch order,
    a missing normalisation or other hidden layers fail."""
    pipe = _base()
    with torch.no_grad():
        pipe.vae.bn.running_mean.normal_()  # the toy's statistics are (0, 1): make them matter
        pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
        ours = klein.encode_images(pipe.vae, pixels)
        theirs = pipe._encode_vae_image(pixels, generator=None)
        embeds, _ = pipe.encode_prompt(["a photo"], device="cpu")
        pipe.vae.bn.running_mean.zero_()
    assert ours.shape == (2, 16, 4, 4) and torch.allclose(ours, theirs, atol=1e-6)
    assert torch.equal(klein.encode_prompts(pipe, ["a photo"]), embeds)


def test_the_step_loss_is_the_flow_matching_loss_done_by_hand():
    """The loop's loss on FLUX.2 is mean((v_pred - (noise - x0))^2) at the shifted sigma of the
    drawn timestep (shifted for the resolution), with the pipeline's own packing and position ids.
    Wrong ids, a wrong target (e.g. the noise), no shift or another, or a wrong timestep scale fail."""
    from portraitkit.train.objective import step_loss, training_scheduler

    pipe = _base()
    generator = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(2, 16, 4, 4, generator=generator), torch.randn(2, 16, 4, 4, generator=generator)
    embeds = torch.randn(2, 512, 48, generator=generator)
    timesteps = torch.tensor([99, 799])
    with torch.no_grad():
        ours = step_loss(pipe, training_scheduler(pipe), latents, noise, timesteps, {"embeds": embeds}, 512, 5.0)
        u = (timesteps + 1) / 1000
        shift = math.exp(0.5 + (1.15 - 0.5) * (32 * 32 - 256) / (4096 - 256))  # 512 px: 32 x 32 image tokens
        sigma = shift * u / (1 + (shift - 1) * u)
        noisy = (1 - sigma.view(-1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1) * noise
        velocity = pipe.transformer(hidden_states=pipe._pack_latents(noisy), encoder_hidden_states=embeds, timestep=sigma,
                                    img_ids=pipe._prepare_latent_ids(noisy), txt_ids=pipe._prepare_text_ids(embeds),
                                    guidance=None, return_dict=False)[0]
        by_hand = ((velocity - pipe._pack_latents(noise - latents)) ** 2).mean(dim=(1, 2))
    assert torch.allclose(ours, by_hand, atol=1e-6)


def test_both_lora_files_render_what_the_in_memory_adapter_renders(tmp_path):
    """diffusers' Flux2KleinPipeline.load_lora_weights reads the diffusers file and the kohya file
    (BFL key names, q/k/v fused block-diagonally) and renders the in-memory LoRA within 1e-4; the
    base alone renders differently, so the check can fail. A dropped module, a wrong fusion or a
    scale not folded in fail it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    pipe = load_pipeline("tiny-klein")
    lora.add_to_pipeline(pipe, 4, 8, train_text_encoder=False)
    with torch.no_grad():
        for name, parameter in pipe.transformer.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    expected = _render(pipe)
    lora.save(pipe, tmp_path, 4, 8, train_text_encoder=False, precision="fp32")
    assert (_render(_base()) - expected).abs().max() > 1e-2
    for weights in (lora.LORA_FILE, lora.kohya_file(tmp_path).name):
        fresh = load_pipeline("tiny-klein")
        fresh.load_lora_weights(load_file(tmp_path / weights))
        assert (_render(fresh) - expected).abs().max() < 1e-4, weights
    with safe_open(lora.kohya_file(tmp_path), "pt") as handle:
        keys, meta = set(handle.keys()), handle.metadata()
    assert {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in keys} == {
        f"lora_unet_{name}" for name in ("double_blocks_0_img_attn_qkv", "double_blocks_0_img_attn_proj",
                                          "double_blocks_0_txt_attn_qkv", "double_blocks_0_txt_attn_proj",
                                          "single_blocks_0_linear1", "single_blocks_0_linear2")}
    assert meta["ss_base_model_version"] == "flux2_klein_4b_base" and meta["ss_network_dim"] == "4"


def _config(dataset, out, **changes) -> TrainConfig:
    settings = dict(dataset_dir=str(dataset), out_dir=str(out), base="tiny-klein", steps=6, rank=4, lr=1e-3, optimizer="adamw",
                    checkpoint_every=3, caption_dropout=0.3, validate=False)
    return TrainConfig(**{**settings, **changes})


def test_a_klein_run_trains_resumes_bit_equal_validates_samples_and_picks(tmp_path, face_dataset):
    """Mechanics only (toy weights): the loop trains the transformer's LoRA (it moves off its
    zero start), a run killed after its step-3 checkpoint and resumed ends with exactly the
    uninterrupted run's weights, validation renders and scores, `sample` draws with the
    family's own sampler and records it in the PNG, and `pick` ranks what it drew."""
    from safetensors.torch import load_file

    from portraitkit.pick.likeness import rank_images

    from portraitkit.sample.infotext import read_parameters
    from portraitkit.sample.render import SampleConfig, sample

    straight = train(_config(face_dataset, tmp_path / "straight", validate=True, validation_seeds=(0,),
                             validation_styles=("studio",), validation_steps=2))

    def disconnect(row):
        if row["step"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(face_dataset, tmp_path / "resumed"), on_step=disconnect)
    resumed = train(_config(face_dataset, tmp_path / "resumed", resume=True))
    expected, got = load_file(straight / lora.LORA_FILE), load_file(resumed / lora.LORA_FILE)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert all(value.abs().max() > 0 for key, value in expected.items() if "lora_B" in key)  # B starts at zero
    told = " ".join(lora.where_the_files_go(straight))  # A1111 runs no FLUX.2: the kohya file is for ComfyUI
    assert "ComfyUI" in told and "Flux2KleinPipeline" in told and "AUTOMATIC1111" not in told
    identity = json.loads((straight / "identity.json").read_text())
    assert [row["step"] for row in identity["steps"]][-1] == 6 and identity["recipe"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"

    manifest = sample(SampleConfig(run_dir=str(straight), out_dir=str(tmp_path / "images"), styles=["studio"], per_style=1,
                                   steps=2), progress=False)
    parameters = read_parameters(tmp_path / "images" / manifest[0]["file"])
    assert (parameters["Sampler"], parameters["Schedule type"], parameters["CFG scale"]) == ("Euler", "Simple", "4.0")

    # pick ranks klein's portraits as it ranks SD's (the toy draws no face: listed, with the reason)
    ranking = rank_images(tmp_path / "images", face_dataset, top=1)
    assert [row["file"] for row in ranking] == [manifest[0]["file"]] and ranking[0]["reasons"] == ["no face found"]
    assert (tmp_path / "images" / "picks.png").is_file()


def test_what_klein_does_not_do_is_refused_in_one_sentence(tmp_path, face_dataset):
    """Text-encoder training, DoRA and preservation are refused before loading; SD samplers are
    refused for FLUX.2 and its sampler for SD."""
    from portraitkit.sample.recipe import family_sampler

    for change in ({"train_text_encoder": True}, {"dora": True}, {"output_preservation": True}):
        with pytest.raises(PortraitkitError, match="not available for FLUX.2"):
            train(_config(face_dataset, tmp_path / "refused", **change))
    assert family_sampler("flux2") == "flow_euler" and family_sampler("sdxl") == "dpmpp_2m_karras"
    with pytest.raises(PortraitkitError, match="cannot draw with a FLUX.2"):
        family_sampler("flux2", "euler_a")
    with pytest.raises(PortraitkitError, match="FLUX.2's"):
        family_sampler("sd", "flow_euler")


@pytest.mark.parametrize("targets", ["attention", "attention+mlp"])
def test_real_size_kohya_keys_and_shapes_are_the_ones_diffusers_reads_back(targets):
    """The real klein 4B transformer (meta device, published config) gets a LoRA on its 5 double
    blocks' 8 attention projections and its 20 single blocks' 2 fused ones; its kohya file has the
    BFL names with the fused shapes (qkv up 3 x 3072 by 3 x rank), and diffusers' own kohya
    converter gives back every module's exact A and B. A missed block, a wrong BFL name or a
    wrong fusion fail."""
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux2_lora_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from portraitkit.models import kohya
    from portraitkit.models.architectures import arch_key, architecture
    from portraitkit.plan.tracing import meta_component

    transformer = meta_component(arch_key(architecture("klein4b")), "transformer", 2)
    lora.add_adapters(transformer, 4, klein.lora_targets(transformer, targets))
    generator = torch.Generator().manual_seed(3)
    layers = {key: torch.randn(value.shape, generator=generator) for key, value in get_peft_model_state_dict(transformer).items()}
    mlp = 4 if targets == "attention+mlp" else 0  # each double block's image and text MLP, in and out
    assert len(layers) == 2 * (5 * (8 + mlp) + 20 * 2)
    file = kohya.flux2_state_dict(layers, torch.float32)
    assert file["lora_unet_double_blocks_4_img_attn_qkv.lora_up.weight"].shape == (3 * 3072, 3 * 4)
    assert file["lora_unet_single_blocks_19_linear1.lora_up.weight"].shape == (3 * 3072 + 2 * 9216, 4)
    assert file["lora_unet_single_blocks_19_linear2.lora_down.weight"].shape == (4, 3072 + 9216)
    assert len({key.split(".")[0] for key in file}) == 5 * (4 + mlp) + 20 * 2
    if mlp:  # BFL's names, as ComfyUI maps double_blocks.N.img_mlp.0 (diffusers' ff.linear_in)
        assert file["lora_unet_double_blocks_0_img_mlp_0.lora_down.weight"].shape == (4, 3072)
        assert file["lora_unet_double_blocks_0_txt_mlp_2.lora_up.weight"].shape == (3072, 4)
    back = _convert_kohya_flux2_lora_to_diffusers(dict(file))
    assert back.keys() == {f"transformer.{key}" for key in layers}
    assert all(torch.equal(back[f"transformer.{key}"], value) for key, value in layers.items())


def test_the_t4_plan_needs_nf4_for_the_ram_and_states_the_recipe():
    """`plan --base klein4b --gpu t4`: the real transformer (3,875,544,576 parameters from the
    published config) traced on meta; fp16 weights fit the GPU but not a free Colab's RAM beside
    Qwen3-4B, so auto chooses NF4 and says so; an A100 (no RAM limit) keeps fp16. Estimates,
    never measured here."""
    from portraitkit.plan.estimate import plan_run

    t4 = plan_run("klein4b", gpu="t4")
    assert t4.family == "flux2" and t4.parameters["transformer"] == 3_875_544_576 and t4.config.quantize == "nf4"
    assert t4.fits and t4.peak_gpu_mem_gb <= 14.75 and t4.config.gradient_checkpointing
    assert "4-bit NF4" in t4.summary() and "estimates, not measurements" in t4.summary()
    fp16 = plan_run("klein4b", gpu="t4", quantize="none")
    # fp16 fits neither a free Colab's RAM nor, once validation brings Qwen3 beside it, the GPU
    assert fp16.fits_gpu is False and fp16.fits_host is False and "--quantize nf4" in fp16.advice
    assert fp16.phases_gb["validation_prompts"] > 14.75 > fp16.phases_gb["train_step"]
    # 4-bit but for the input, output and timestep layers kept in 16 bits (NF4_KEPT, about 60 MiB)
    assert 3.3 * t4.breakdown_gb["transformer"] < fp16.breakdown_gb["transformer"] < 3.6 * t4.breakdown_gb["transformer"]
    assert plan_run("klein4b", gpu="a100").config.quantize == "none"


def test_the_trainer_follows_the_plans_recipe_and_stops_on_nan(tmp_path):
    """Which recipe `train` picks (no GPU needed: the device is given): NF4 only for FLUX.2 on a
    GPU, by --quantize or by the planner; never on a CPU. And the NaN guard stops in one sentence."""
    from portraitkit.plan.devices import DEVICES
    from portraitkit.train.fitting import quantize_transformer
    from portraitkit.train.objective import step_loss, training_scheduler

    config = TrainConfig(dataset_dir=str(tmp_path), out_dir=str(tmp_path / "run"), base="klein4b")
    assert quantize_transformer(config, "flux2", gpu=True, device=DEVICES["t4"]) is True
    assert quantize_transformer(config, "flux2", gpu=True, device=DEVICES["a100"]) is False
    assert quantize_transformer(config, "flux2", gpu=False) is False
    assert quantize_transformer(config, "sdxl", gpu=True, device=DEVICES["t4"]) is False
    forced = TrainConfig(dataset_dir=str(tmp_path), out_dir=str(tmp_path / "run"), base="klein4b", quantize="none")
    assert quantize_transformer(forced, "flux2", gpu=True, device=DEVICES["t4"]) is False
    pipe = _base()
    latents = torch.full((1, 16, 4, 4), float("nan"))
    with pytest.raises(PortraitkitError, match="NaN or infinite"):
        step_loss(pipe, training_scheduler(pipe), latents, torch.zeros_like(latents), torch.tensor([10]),
                  {"embeds": torch.zeros(1, 512, 48)}, 64, None)


def test_the_cache_and_the_masked_loss_work_on_the_patch_grid(portrait_path):
    """The cache encodes klein latents (16 x 4 x 4 for 64 px), Qwen3 captions and their bare
    trigger phrases once, and brings face masks to the patch grid; the masked loss then counts
    only the masked patches. A mask at the VAE's 8x8 grid, or an unweighted loss, fail."""
    from PIL import Image

    from portraitkit.train.cache import encode_examples
    from portraitkit.train.objective import step_loss, training_scheduler

    pipe = _base()
    photo = Image.open(portrait_path).convert("RGB").resize((64, 64))
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 8, 8))  # inside the first 16 px patch; dilated by one patch: the top-left 2 x 2 patches
    examples = [{"image": photo, "text": "a photo of sks person, smiling", "mask": mask}]
    cache = encode_examples(pipe, examples, 64, encode_captions=True, bare=True, masks=True)
    assert cache["latents"].shape == (1, 16, 4, 4) and cache["embeds"].shape == (1, 512, 48)
    assert not torch.equal(cache["embeds"], cache["bare_embeds"])
    weights = cache["masks"]
    assert weights.shape == (1, 1, 4, 4) and weights.sum() == 4  # the patch with the face, dilated by one patch
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([500])
    with torch.no_grad():
        masked = step_loss(pipe, training_scheduler(pipe), cache["latents"], noise, t, {"embeds": cache["embeds"]}, 64, None,
                           mask=weights)
        plain = step_loss(pipe, training_scheduler(pipe), cache["latents"], noise, t, {"embeds": cache["embeds"]}, 64, None)
        sigma = klein.shifted_sigmas(torch.tensor([0.501]), 64)
        prediction, target = klein.velocity_prediction(pipe.transformer, cache["latents"], noise, sigma, cache["embeds"],
                                                       torch.float32)
    error = (prediction - target) ** 2
    assert torch.allclose(masked, error[..., :2, :2].mean().view(1), atol=1e-6)
    assert torch.allclose(plain, error.mean().view(1), atol=1e-6) and not torch.allclose(masked, plain)


def test_placement_leaves_a_quantised_transformer_where_bitsandbytes_put_it():
    """An NF4 transformer is loaded onto the GPU and cannot move (bitsandbytes): every phase keeps
    it there, even `keep()` after a failure. Here the meta device stands in for the GPU (a meta
    tensor cannot be copied out either), so moving it would raise."""
    from portraitkit.train.placement import Placement

    pipe = load_pipeline("tiny-klein")
    pipe.transformer.to("meta")
    pipe.transformer.is_quantized = True
    placement = Placement(pipe, torch.device("meta"))
    assert placement.here == {"transformer"}
    with placement.on():  # a phase without it (caching): it stays
        assert placement.here == {"transformer"}
    placement.keep()  # what `release` does after a failure
    assert placement.here == {"transformer"} and pipe.transformer.device.type == "meta"


def test_libraries_older_than_klein_are_named_with_the_upgrade(monkeypatch, capsys):
    """The floors (diffusers 0.33, transformers 4.45) train SD but have no FLUX.2 [klein] classes:
    asking for klein there says which versions it needs, in one sentence, before anything loads."""
    import diffusers

    from portraitkit.cli import main

    monkeypatch.setattr(diffusers, "__version__", "0.36.0")  # the last release without Flux2KleinPipeline
    for argv in (["plan", "--base", "klein4b", "--gpu", "t4"], ["plan", "--base", "tiny-klein"]):
        assert main(argv) == 2
        said = capsys.readouterr().err.strip()
        assert "FLUX.2 [klein] needs diffusers 0.37 or newer" in said and "diffusers 0.36.0" in said and len(said.splitlines()) == 1
    assert main(["plan", "--base", "sd15", "--gpu", "t4"]) == 0  # Stable Diffusion is unaffected


def test_the_memory_figure_of_notebook_04_counts_klein_transformers_lora():
    """Notebook 04's memory figure with BASE = "klein4b": the transformer's LoRA counted from its
    Linear shapes equals what peft adds to the real architecture on meta (the traced step's)."""
    from portraitkit.models.architectures import arch_key, architecture
    from portraitkit.plan import figures
    from portraitkit.plan.estimate import lora_parameter_count
    from portraitkit.plan.tracing import transformer_training_step

    counted = lora_parameter_count("klein4b", 16)
    step = transformer_training_step(arch_key(architecture("klein4b")), 256, 1, 16, True, 2, True)
    assert counted == sum(step["lora_numels"]) == 18_677_760
    assert "klein4b transformer (3876M parameters; LoRA 18.7M)" in figures.memory_figure("klein4b", rank=16).axes[0].get_title()


def test_the_training_shift_rises_with_resolution_as_musubi_tuner_recommends():
    """exp(mu), mu linear in image tokens from 0.5 at 256 to 1.15 at 4096: ~1.9 at 512 px, ~3.2 at 1024 px."""
    import math

    from portraitkit.models import klein

    assert klein.training_shift(512) == pytest.approx(math.exp(0.5 + 0.65 * (1024 - 256) / 3840), rel=1e-9)
    assert 1.85 < klein.training_shift(512) < 1.95 and 3.1 < klein.training_shift(1024) < 3.2
    assert klein.training_shift(64) == pytest.approx(math.exp(0.5)) and klein.training_shift(2048) == pytest.approx(math.exp(1.15))
    half = klein.shifted_sigmas(torch.tensor([0.5]), 512)
    assert float(half) == pytest.approx(klein.training_shift(512) / (1 + klein.training_shift(512)), rel=1e-6)


# --- every phase planned, against the real code path on the toy base --------------------------------


def test_every_phase_the_planner_counts_is_what_the_real_code_holds():
    """The planner's peaks for FLUX.2 come from meta-device traces; here each pass a run makes runs
    for real on the toy base under the same byte counter (live tensors, no gradients as in the run):
    caching's caption encoding (PROMPTS_AT_ONCE captions, all hidden states and logits kept) and VAE
    encoding, the held-out loss (one photo's noise levels), validation's and sample's prompt
    encoding, one denoising pass and the decode. A trace that leaves out the padding mask, the
    logits or a chunk (all 20 captions at once) misses by far more than 15%."""
    from portraitkit.models.architectures import architecture
    from portraitkit.plan import klein as plan_klein
    from portraitkit.plan.devices import DEVICES
    from portraitkit.plan.estimate import PlanConfig
    from portraitkit.plan.tracing import _Tracer  # noqa: PLC2701 (the planner's own counter, on real tensors)
    from portraitkit.train.objective import training_scheduler
    from portraitkit.train.validate import HELD_OUT_DRAWS, validation_loss

    pipe = _base()
    m = plan_klein.measures(PlanConfig(base="tiny-klein", resolution=64, quantize="none"), DEVICES["cpu"], architecture("tiny-klein"))
    captions = [f"a photo of sks person, {word}" for word in ("smiling", "outdoors", "in a studio", "at night")]
    embeds = klein.encode_prompts(pipe, captions[:1])
    latents = torch.randn(1, 16, 4, 4)

    def denoise(_):
        klein.velocity_prediction(pipe.transformer, latents, torch.randn_like(latents), torch.full((1,), 0.5), embeds, torch.float32)

    cache = {"latents": latents, "embeds": embeds}
    real = {
        "caption_encoding": lambda _: klein.encode_prompts(pipe, captions * 2),
        "prompt_encoding": lambda _: klein.encode_prompts(pipe, captions[:1]),
        "vae_encoding": lambda _: klein.encode_images(pipe.vae, torch.zeros(1, 3, 64, 64)),
        "held_out_loss": lambda _: validation_loss(pipe, cache, captions[:1], training_scheduler(pipe), 64, None, 0),
        "denoise": denoise,
        "decode": lambda _: pipe.vae.decode(torch.randn(1, 4, 8, 8)),
    }
    assert plan_klein.HELD_OUT_DRAWS == HELD_OUT_DRAWS
    with torch.no_grad():
        for phase, run in real.items():
            held = _Tracer(False).run(run)["peak"]
            assert m[phase] == pytest.approx(held, rel=0.15), (phase, m[phase], held)


def test_the_t4_plan_names_every_phase_and_fits_the_session_with_sampling():
    """`plan --base klein4b --gpu t4`: 512 px (1024 px steps alone would take most of a session),
    NF4, as many validations at klein's 50 steps as fit beside the steps, the whole run within the
    2 h budget; every phase named; sampling planned with the recipe `sample` uses (NF4, Qwen3 on
    the GPU only for the prompts) within the T4. An A100 keeps 1024 px and fp16."""
    from portraitkit.plan.estimate import SESSION_SECONDS, plan_run, plan_sampling

    t4 = plan_run("klein4b", gpu="t4")
    assert t4.resolution == 512 and t4.config.quantize == "nf4" and t4.config.validation_steps == 50
    assert set(t4.phases_gb) == {"load_and_cache", "train_step", "held_out_loss", "validation_prompts", "validation"}
    assert 1 <= t4.config.validations < 10 and t4.total_seconds + t4.validation_seconds <= SESSION_SECONDS
    assert plan_run("klein4b", gpu="t4", resolution=1024).total_seconds > 0.75 * SESSION_SECONDS
    listed = t4.to_dict()
    assert listed["session"]["within"] and listed["total_includes_validation"] is False
    assert listed["inference"]["quantize"] == "nf4" and listed["inference"]["peak_gpu_mem_gb"] <= 14.75
    sampling = plan_sampling("klein4b", "t4", 512)
    assert sampling["fits"] and sampling["quantize"] == "nf4" and sampling["phases_gb"]["prompts"] > 7.5
    assert plan_sampling("klein4b", "t4", 512, quantize="none")["fits"] is False  # the old fp16 load: 14.9 GiB, and RAM
    a100 = plan_run("klein4b", gpu="a100")
    assert a100.resolution == 1024 and a100.config.quantize == "none" and plan_sampling("klein4b", "a100")["quantize"] == "none"


def test_nf4_keeps_the_input_output_and_timestep_layers_in_16_bits():
    """diffusers' own bitsandbytes replacement, run on the toy transformer with portraitkit's config:
    the layers of NF4_KEPT stay nn.Linear, every other Linear becomes 4-bit; the compute dtype is
    fp16 where the GPU has no native bf16 (a T4, and this CPU machine)."""
    from diffusers.quantizers.bitsandbytes.utils import replace_with_bnb_linear

    transformer = klein.build_tiny().transformer
    config = klein.nf4_config()
    replaced = replace_with_bnb_linear(transformer, modules_to_not_convert=config.llm_int8_skip_modules, quantization_config=config)
    kinds = {name: type(module).__name__ for name, module in replaced.named_modules() if isinstance(module, torch.nn.Linear)}
    kept = {name for name in kinds if any(name == k or name.startswith(k + ".") for k in klein.NF4_KEPT)}
    assert kept and all(kinds[name] == "Linear" for name in kept)
    assert {kinds[name] for name in kinds.keys() - kept} == {"Linear4bit"}
    assert config.bnb_4bit_compute_dtype == torch.float16


def test_qwen3_overflowing_in_fp16_is_encoded_again_with_fp32_activations():
    """A T4 has no bf16, and Qwen3 in fp32 does not fit a free Colab's RAM: where fp16 activations
    overflow (forced here by scaling one MLP's weights so that fp16's 65504 is passed), the captions
    are encoded again with fp16 weights computing in fp32, and come out finite and equal (to fp16's
    precision) to what the same weights give in fp32. The weights are left as they were. Without
    the fallback the first encoding is NaN and the run stops."""
    import copy

    from portraitkit.models.bases import load_pipeline

    pipe = copy.deepcopy(load_pipeline("tiny-klein"))
    with torch.no_grad():
        for weight in (pipe.text_encoder.model.layers[3].mlp.up_proj.weight, pipe.text_encoder.model.layers[3].mlp.down_proj.weight):
            weight.mul_(1000.0 / float(weight.abs().max()))  # each weight well within fp16, the layer's output past it
    with torch.no_grad():
        reference = klein.encode_prompts(pipe, ["a photo of sks person"])  # fp32 weights and activations
        pipe.text_encoder.to(torch.float16)
        raw = pipe.encode_prompt(["a photo of sks person"], device="cpu", max_sequence_length=klein.MAX_TOKENS,
                                 text_encoder_out_layers=klein.TEXT_LAYERS)[0]
    assert not torch.isfinite(raw).all()  # the overflow this guards against
    with torch.no_grad():
        embeds = klein.encode_prompts(pipe, ["a photo of sks person"])
    assert embeds.dtype == torch.float16 and torch.isfinite(embeds).all()
    assert torch.allclose(embeds.float(), reference.clamp(-65504, 65504), rtol=2e-2, atol=2e-2 * float(reference.abs().max()))
    assert pipe.text_encoder.dtype == torch.float16 and "forward" not in vars(pipe.text_encoder.lm_head)


def test_targets_attention_and_mlp_is_klein_only_and_costs_what_the_plan_says(tmp_path):
    """--targets attention+mlp adds the 5 double blocks' four MLP layers: 5,406,720 more LoRA
    parameters at rank 16 on the real 4B (29% more file), a few MB more memory; SD refuses it in
    one sentence, before loading."""
    from portraitkit.plan.estimate import lora_parameter_count, plan_run
    from portraitkit.models import families

    both = lora_parameter_count("klein4b", 16, targets="attention+mlp")
    # per double block and stream: linear_in 3072 -> 2 x 9216 (SwiGLU's gate and value), linear_out 9216 -> 3072
    assert both - lora_parameter_count("klein4b", 16) == 5 * 2 * 16 * ((3072 + 2 * 9216) + (9216 + 3072)) == 5_406_720
    wide = plan_run("klein4b", gpu="t4", targets="attention+mlp")
    assert wide.parameters["lora"] == both and wide.phases_gb["train_step"] > plan_run("klein4b", gpu="t4").phases_gb["train_step"]
    config = TrainConfig(dataset_dir=str(tmp_path), out_dir=str(tmp_path / "run"), base="tiny-sd", targets="attention+mlp")
    with pytest.raises(PortraitkitError, match="--targets attention\\+mlp is for FLUX.2"):
        families.named("sd").refuse(config)
    with pytest.raises(PortraitkitError, match="is for FLUX.2"):
        plan_run("sd15", targets="attention+mlp")


def test_train_takes_the_sessions_size_and_validations_on_a_t4_and_a_resume_keeps_its_size(tmp_path, capsys):
    """What `train` does on a T4 with klein4b and nothing chosen: the plan's 512 px and as many
    validations as fit the 2 h session (said in one line); what the user chose stays; a resumed
    run keeps the size its config.json recorded (a resume on a larger GPU does not change it)."""
    from portraitkit.core.files import write_json
    from portraitkit.plan.estimate import plan_for_training
    from portraitkit.train.fitting import session_defaults

    config = TrainConfig(dataset_dir=str(tmp_path), out_dir=str(tmp_path / "run"), base="klein4b")
    estimate = plan_for_training(config, "t4")
    sized = session_defaults(config, estimate)
    assert sized.resolution == 512 == estimate.resolution
    assert len(sized.validated_steps()) == estimate.config.validations < len(config.validated_steps())
    assert sized.validated_steps()[-1] == config.steps  # the last step is still validated
    assert "512 px and validation every" in capsys.readouterr().out
    chosen = TrainConfig(dataset_dir=str(tmp_path), out_dir=str(tmp_path / "run"), base="klein4b", resolution=768,
                         validate_every=100)
    assert session_defaults(chosen, plan_for_training(chosen, "t4")) == chosen
    write_json(tmp_path / "run" / "config.json", {"settings": {"resolution": 1024}, "base": {"name": "klein4b"}})
    resumed = TrainConfig(**{**vars(config), "resume": True})
    assert session_defaults(resumed, plan_for_training(resumed, "t4")).resolution == 1024
