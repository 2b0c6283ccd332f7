"""Sampling: styled portraits of the person from a trained run.

The story of `sample`:
1. read the run folder's config.json: which base model, which resolution, and (from the
   dataset it trained on) the token and class word the LoRA answers to;
2. load the base in fp16 on a GPU (fp32 on a CPU; FLUX.2's transformer in 4-bit NF4 where the
   planner finds fp16 too big, as on a free T4), add the LoRA at the chosen strength;
3. encode every prompt once, the text encoders on the GPU only for that, then for each style and
   seed render one image, saving it with its full recipe in a PNG text chunk
   and in `manifest.json` (rewritten after every image, so a disconnect loses at most one);
4. lay each style's images out in `grids/<style>.png` (with the settings that differ in the name, as the
   images have them, and each tile's seed and strength under it).

Every image starts from noise drawn by a CPU generator seeded with its seed, so the same seed and
settings give the same image again, on any machine that runs the same software in the same
precision. A re-run into the same folder keeps the images whose recipe has not changed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from portraitkit.models import lora
from portraitkit.models.bases import decode_problem, native_resolution
from portraitkit.models import families
from portraitkit.models.conditioning import without_text_encoders
# read_run and person_words are re-exported: notebook 05's panel reads the run through here.
from portraitkit.models.bases import no_loading_bars
from portraitkit.models.runs import person_words, read_run  # noqa: F401
from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import save_image, write_json
# read_parameters is re-exported: notebook 05 reads a PNG's recipe from here.
from portraitkit.sample.infotext import lora_hash, model_identity, png_parameters, read_parameters  # noqa: F401
from portraitkit.core.quiet import quiet
from portraitkit.core.settings import check_at_least, check_finite, check_resolution, setting
from portraitkit.sample.recipe import DEFAULT_SAMPLER, SAMPLERS, family_sampler, make_scheduler
from portraitkit.sample.styles import Style, load_styles, select_styles

MANIFEST = "manifest.json"
ADAPTER = "person"


@dataclass
class SampleConfig:
    """Settings of a sampling run; each field's help is also its `portraitkit sample` help."""

    run_dir: str = setting("run folder written by `portraitkit train`")
    out_dir: str = setting("folder for the images, manifest.json and grids/")
    styles: list[str] | None = setting("style names (see `portraitkit styles`); default: studio, natural, outdoor, corporate", None)
    per_style: int = setting("images per style, with seeds seed, seed+1, ...", 4)
    seed: int = setting("first seed; the same seed and settings give the same image", 0)
    lora_scale: float = setting("LoRA strength: 1 as trained, 0 is the base model alone (LoRA and DoRA alike), 0.7-0.9 trades "
                                "likeness for the style", 1.0)
    steps: int | None = setting("denoising steps; default: the style's own (30)", None)
    guidance_scale: float | None = setting("classifier-free guidance; default: the style's own (7 SD1.5, 5.5 SDXL)", None)
    sampler: str = setting("sampler, named as in AUTOMATIC1111", DEFAULT_SAMPLER, choices=tuple(SAMPLERS))
    resolution: int | None = setting("image size in pixels; default: the size the LoRA was trained at", None)
    lora: str = setting("which LoRA: final (the run's last step) or best (the validation step most like the person)", "final",
                      choices=("final", "best"))
    token: str | None = setting("the person's token in prompts; default: read from the run's dataset captions", None)
    class_word: str | None = setting("the class word after the token (person, woman, man...); default: from the captions", None)
    styles_file: str | None = setting("YAML or JSON file with your own styles, added to the built-in ones", None)
    vae: str | None = setting("a diffusers VAE folder or hub id replacing the base's (madebyollin/sdxl-vae-fp16-fix: SDXL in fp16 "
                              "without NaN images); default: the one the run trained with", None)
    quantize: str = setting("FLUX.2 bases on a GPU: the transformer in fp16 (none), in 4-bit NF4 (nf4), or auto: fp16 where it "
                            "fits the GPU and the RAM, else NF4 (a free Colab T4)", "auto", choices=("auto", "none", "nf4"))


def sample(config: SampleConfig, styles: dict[str, Style] | None = None, loaded: dict | None = None,
           progress: bool = True) -> list[dict]:
    """Render every chosen style and seed; return the manifest (one dict per image).

    `styles` is a style library from `load_styles` (default: the built-ins plus `styles_file`).
    `loaded`, a dict kept by the caller, keeps the pipeline with its LoRA between calls that use
    the same run, LoRA and sampler (`compare_dials`): it is loaded once, not once per call.
    `progress=False` shows no progress bars (`compare_dials` shows its picture instead).
    """
    import torch
    from tqdm.auto import tqdm

    from portraitkit.core.grids import image_grid

    check_config(config)
    run_dir, out_dir = Path(config.run_dir), Path(config.out_dir)
    run = read_run(run_dir)
    family = families.named(run["base"]["family"])
    if config.quantize == "nf4" and not family.quantizable:
        raise PortraitkitError(f"--quantize nf4 is for FLUX.2 [klein] bases; {family.label} samples with fp16 weights: leave it out")
    sampler = family_sampler(family.name, config.sampler)
    chosen = select_styles(styles or style_library(config, family.name), config.styles)
    token, class_word = person_words(run, config.token, config.class_word)
    lora_dir = run_dir / "best" if config.lora == "best" else run_dir
    identity = run_dir / "identity.json"
    if config.lora == "final" and identity.is_file() and json.loads(identity.read_text()).get("recommended") == "best":
        print("An earlier validation step looked more like the person than the final one (identity.json): "
              "try --lora best as well.")
    if not (lora_dir / lora.LORA_FILE).is_file():
        hint = "use --lora final" if config.lora == "best" else "train it first, or wait for the run to finish"
        raise PortraitkitError(f"{lora_dir} has no {lora.LORA_FILE}: {hint}")

    resolution = config.resolution or run["settings"].get("resolution") or native_resolution(run["base"]["source"])
    model, model_hash = model_identity(run["base"])
    kohya = lora.kohya_file(lora_dir)
    shared = {
        "lora_scale": config.lora_scale, "sampler": SAMPLERS[sampler].label,
        "schedule_type": SAMPLERS[sampler].schedule_type, "width": resolution, "height": resolution,
        "model": model, "model_hash": model_hash, "lora": str(lora_dir / lora.LORA_FILE),
        # A1111 names the LoRA by the kohya file it loads, and hashes that file its own way.
        "lora_name": kohya.stem, "lora_hash": lora_hash(kohya) if kohya.is_file() else None,
        "token": token, "class_word": class_word, "vae": config.vae or run["settings"].get("vae"),
    }
    trained = run["settings"].get("resolution") or native_resolution(run["base"]["source"])
    planned = []
    for style in chosen:
        prompt, negative = style.render(token, class_word)
        differs = what_differs(config, style, resolution, trained, run["settings"].get("vae"))
        for seed in range(config.seed, config.seed + config.per_style):
            planned.append({
                "file": "_".join([style.name, f"seed{seed}", *differs]) + ".png", "style": style.name, "seed": seed, "prompt": prompt,
                # the style's grid, named like its images: a batch with other settings gets its own
                "grid": "grids/" + "_".join([style.name, *differs]) + ".png",
                # `is None`, not `or`: guidance 0 is a legal choice (no classifier-free guidance)
                "negative_prompt": negative, "steps": style.steps if config.steps is None else config.steps,
                "guidance_scale": style.guidance_scale if config.guidance_scale is None else config.guidance_scale, **shared,
            })

    manifest = _previous_manifest(out_dir)
    # Images an earlier run made with exactly this recipe are kept (a Colab disconnect costs
    # only the image in progress), and the model is not even loaded when none is missing.
    missing = [e for e in planned if not (manifest.get(e["file"]) == e and (out_dir / e["file"]).is_file())]
    if missing:
        loaded = {} if loaded is None else loaded
        key = (str(lora_dir.resolve()), shared["lora_hash"], sampler, shared["vae"])
        if loaded.get("key") != key:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            quantize = sampling_recipe(run["base"]["name"], family, resolution, missing[0]["steps"], config.quantize, device)
            with contextlib.nullcontext() if progress else no_loading_bars():
                loaded.update(key=key, device=device, pipe=load_for_sampling(run["base"]["name"], device, sampler,
                                                                             vae=shared["vae"], quantize=quantize))
            with quiet():  # "No LoRA keys associated to CLIPTextModel": the LoRA trained the UNet only
                lora.load(loaded["pipe"], lora_dir, adapter_name=ADAPTER)
        pipe = loaded["pipe"]
        # Strength as A1111 and ComfyUI read `<lora:NAME:S>`: 0 the base exactly, 1 the trained model, for DoRA too.
        lora.set_strength(pipe, ADAPTER, config.lora_scale)
        # Every prompt is encoded once, before any image: the text encoders (FLUX.2's 7.5 GiB Qwen3)
        # then go back to RAM, and the denoiser has the GPU to itself.
        with torch.inference_mode():
            embeddings = encode_once(pipe, [(e["prompt"], e["negative_prompt"]) for e in missing], loaded["device"])
        drawing = without_text_encoders(pipe)
        # One bar counts the portraits; each image's own bar of denoising steps closes when done.
        # The pipeline's config replaces the whole dict (load_pipeline's disable=True with it), and a
        # `disable` given explicitly overrides TQDM_DISABLE: so both are decided here.
        quiet_bars = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
        drawing.set_progress_bar_config(leave=False, disable=quiet_bars)
    # `disable` passed only to switch the bar off: passed at all, it would override TQDM_DISABLE
    for entry in tqdm(missing, desc="sampling portraits", unit="img", **({} if progress else {"disable": True})):
        generator = torch.Generator("cpu").manual_seed(entry["seed"])
        with torch.inference_mode():
            array = drawing(**embeddings[entry["prompt"], entry["negative_prompt"]], num_inference_steps=entry["steps"],
                            guidance_scale=entry["guidance_scale"], height=resolution, width=resolution, generator=generator,
                            output_type="np", **family.sampling_arguments(resolution)).images
        if problem := decode_problem(array):  # never save a black square as a portrait
            raise PortraitkitError(f"{entry['file']}: {problem}")
        image = drawing.numpy_to_pil(array)[0]
        save_image(out_dir / entry["file"], image, pnginfo=png_parameters(entry))
        manifest[entry["file"]] = entry
        write_json(out_dir / MANIFEST, list(manifest.values()))
    write_json(out_dir / MANIFEST, list(manifest.values()))

    from PIL import Image

    for style in chosen:
        entries = [e for e in planned if e["style"] == style.name]
        with_images = [Image.open(out_dir / e["file"]).convert("RGB") for e in entries]
        captions = [f"seed {e['seed']} · LoRA {e['lora_scale']:g}" for e in entries]
        save_image(out_dir / entries[0]["grid"], image_grid(with_images, columns=min(4, len(with_images)), captions=captions))
    return planned


def what_differs(config: SampleConfig, style: Style, resolution: int, trained: int, run_vae: str | None) -> list[str]:
    """The settings that differ from the defaults, as parts of an image's name ("lora0.5", "cfg3"):
    a portrait made with other settings gets another name, so a re-run never overwrites one, and
    the defaults keep the plain `<style>_seed<N>.png`."""
    parts = []
    if config.lora_scale != 1.0:
        parts.append(f"lora{config.lora_scale:g}")
    if config.lora != "final":
        parts.append(config.lora)
    if config.guidance_scale is not None and config.guidance_scale != style.guidance_scale:
        parts.append(f"cfg{config.guidance_scale:g}")
    if config.steps is not None and config.steps != style.steps:
        parts.append(f"steps{config.steps}")
    if config.sampler != DEFAULT_SAMPLER:
        parts.append(config.sampler)
    if resolution != trained:
        parts.append(f"{resolution}px")
    if config.vae and config.vae != run_vae:
        parts.append("vae-" + re.sub(r"[^A-Za-z0-9.-]+", "-", Path(config.vae).name))
    return parts


def check_config(config: SampleConfig) -> None:
    """The settings' mistakes, each in one sentence, before the run is read or a model loaded."""
    check_at_least({"per_style": config.per_style, "steps": config.steps}, 1)
    check_at_least({"guidance_scale": config.guidance_scale, "seed": config.seed}, 0)
    check_finite({"lora_scale": config.lora_scale})
    check_resolution(config.resolution)
    if Path(config.out_dir).resolve() == Path(config.run_dir).resolve():
        raise PortraitkitError(f"--out {config.out_dir} is the run folder itself: the portraits would mix with the run's files "
                               f"(and pick would rank its loss curve); choose another folder, e.g. --out {Path(config.run_dir) / 'portraits'}")


def style_library(config: SampleConfig, family: str | None = None) -> dict[str, Style]:
    """The styles a sampling run chooses from: the built-ins for the run's model family (read
    from the run when not given) plus the config's styles file."""
    family = family or read_run(Path(config.run_dir))["base"]["family"]
    return load_styles(*([config.styles_file] if config.styles_file else []), family=family)


def compare_dials(config: SampleConfig, out_dir: str | Path, styles: dict[str, Style] | None = None,
                  guidance_scales=(3.0, 7.0, 12.0), lora_scales=(0.0, 0.5, 1.0), cell: int = 256):
    """What guidance and LoRA strength do, side by side: the first chosen style at the first seed,
    rendered at each guidance scale (top row) and at each LoRA strength (bottom row). Returns
    that grid, each picture at least `cell` pixels and labelled in the image; each variant is an
    ordinary sampling run in its own folder under `out_dir`, so its image carries its recipe and a
    re-run after a disconnect renders only what is missing."""
    from PIL import Image

    styles = styles or style_library(config)
    first = select_styles(styles, config.styles)[0]
    one = dataclasses.replace(config, styles=[first.name], per_style=1)
    variants = [(f"guidance_{g:g}", {"guidance_scale": g}, f"guidance {g:g}" + (" (the style's)" if g == first.guidance_scale else ""))
                for g in guidance_scales]
    variants += [(f"strength_{s:g}", {"lora_scale": s}, f"strength {s:g}" + (" (base alone)" if s == 0 else ""))
                 for s in lora_scales]
    pictures, loaded = [], {}
    for folder, change, label in variants:
        variant = dataclasses.replace(one, out_dir=str(Path(out_dir) / folder), **change)
        [entry] = sample(variant, styles=styles, loaded=loaded, progress=False)  # one pipeline for all six
        pictures.append((Image.open(Path(variant.out_dir) / entry["file"]).convert("RGB"), label))
    rows = [("guidance", pictures[:len(guidance_scales)]), ("LoRA strength", pictures[len(guidance_scales):])]
    title = f"{first.name}, seed {config.seed}: one dial changes along each row"
    return _labelled_rows(title, rows, max(cell, *(picture.width for picture, _ in pictures)))


def _labelled_rows(title: str, rows: list[tuple[str, list]], cell: int):
    """Rows of (picture, caption) under a title, each row named on its left, every word drawn
    into the image: a grid shown or saved without its notebook still says what it shows."""
    from PIL import Image, ImageDraw, ImageFont

    def font(size: int):
        try:
            return ImageFont.load_default(size=size)  # scalable (FreeType) in Pillow >= 10.1
        except (TypeError, OSError):
            return ImageFont.load_default()

    left, head, caption, pad = 150, 40, 30, 8
    columns = max(len(pictures) for _, pictures in rows)
    sheet = Image.new("RGB", (left + columns * (cell + pad), head + len(rows) * (caption + cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 10), title, fill=(20, 20, 20), font=font(22))
    for r, (name, pictures) in enumerate(rows):
        top = head + r * (caption + cell + pad)
        draw.text((pad, top + caption + cell // 2 - 12), name, fill=(20, 20, 20), font=font(20))
        for c, (picture, label) in enumerate(pictures):
            x = left + c * (cell + pad)
            draw.text((x, top + 4), label, fill=(20, 20, 20), font=font(18))
            sheet.paste(picture.resize((cell, cell), Image.Resampling.LANCZOS), (x, top + caption))
    return sheet


# --- the folders ------------------------------------------------------------------------------


def _previous_manifest(out_dir: Path) -> dict[str, dict]:
    path = out_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        return {entry["file"]: entry for entry in json.loads(path.read_text(encoding="utf-8"))}
    except (json.JSONDecodeError, TypeError, KeyError):
        raise PortraitkitError(f"{path} is not a portraitkit manifest: choose an empty --out folder") from None


# --- the pipeline -----------------------------------------------------------------------------


def sampling_recipe(base: str, family, resolution: int, steps: int, quantize: str, device: str) -> bool:
    """Whether the transformer loads in 4-bit NF4 (FLUX.2 on a GPU: --quantize nf4, or auto where
    the planner finds the fp16 load too big for this GPU or its RAM); a load that would not fit
    either way is refused here, before minutes of loading, with what would fit."""
    if device != "cuda" or not family.quantizable:  # SD: fp16 fits the GPUs people use
        return False
    from portraitkit.plan.devices import local_cuda_device
    from portraitkit.plan.estimate import plan_sampling

    planned = plan_sampling(base, local_cuda_device(), resolution, steps, quantize)
    if not planned["fits"]:
        raise PortraitkitError(
            f"sampling {base} would need about {planned['peak_gpu_mem_gb']:.1f} GiB of GPU memory and "
            f"{planned['peak_host_ram_gb']:.1f} GiB of RAM ({planned['recipe']}) and this {planned['device']} has "
            f"{planned['gpu_budget_gb']} GiB and {planned['host_budget_gb']} GiB: "
            + ("use --quantize nf4 or auto" if quantize == "none" else "sample at a smaller --resolution, or on a larger GPU"))
    return planned["quantize"] == "nf4"


def load_for_sampling(base: str, device: str, sampler: str = DEFAULT_SAMPLER, vae: str | None = None, quantize: bool = False):
    """The base pipeline, set up for a T4: fp16 weights (FLUX.2's transformer in 4-bit NF4 when
    `quantize`), memory-light VAE decoding for SDXL; the denoiser and the VAE on `device`, the text
    encoders in RAM until `encode_once` needs them."""
    import torch

    from portraitkit.models.bases import load_pipeline

    pipe = load_pipeline(base, dtype=torch.float16 if device == "cuda" else torch.float32, vae=vae, transformer_nf4=quantize)
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    family = families.of(pipe)
    family.prepare_for_sampling(pipe)  # SDXL: its fp32 VAE decodes in slices and tiles
    for model in (family.denoiser_of(pipe), pipe.vae):
        if not getattr(model, "is_quantized", False):  # bitsandbytes put it on the GPU already
            model.to(device)
    return pipe


def encode_once(pipe, pairs: list[tuple[str, str]], device) -> dict:
    """{(prompt, negative prompt): the pipeline call's embedding arguments}, each pair encoded once
    with the text encoders on `device`, which go back to the CPU afterwards."""
    import torch

    family = families.of(pipe)
    encoders = family.text_encoders_of(pipe)
    for encoder in encoders:
        encoder.to(device)
    try:
        return {pair: family.prompt_embeddings(pipe, *pair, torch.device(device)) for pair in dict.fromkeys(pairs)}
    finally:
        if device != "cpu":
            for encoder in encoders:
                encoder.to("cpu")
            torch.cuda.empty_cache()
