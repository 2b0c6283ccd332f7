"""Sampling: styled portraits of the person from a trained run.

The story of `sample`:
1. read the run folder's config.json: which base model, which resolution, and (from the
   dataset it trained on) the token and class word the LoRA answers to;
2. load the base in fp16 on a GPU (fp32 on a CPU), add the LoRA at the chosen strength;
3. for each style and seed render one image, saving it with its full recipe in a PNG text chunk
   and in `manifest.json` (rewritten after every image, so a disconnect loses at most one);
4. lay each style's images out in `grids/<style>.png`.

Every image starts from noise drawn by a CPU generator seeded with its seed, so the same seed and
settings give the same image again, on any machine that runs the same software in the same
precision. A re-run into the same folder keeps the images whose recipe has not changed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from portraitkit.models import lora
from portraitkit.models.bases import decode_problem, native_resolution
from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import read_json, save_image, write_json
# read_parameters is re-exported: notebook 05 reads a PNG's recipe from here.
from portraitkit.sample.infotext import lora_hash, model_identity, png_parameters, read_parameters  # noqa: F401
from portraitkit.core.quiet import quiet
from portraitkit.core.settings import check_at_least, check_resolution, setting
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
    lora_scale: float = setting("LoRA strength: 1 as trained, 0 is the base model alone, 0.7-0.9 trades likeness for the style", 1.0)
    steps: int | None = setting("denoising steps; default: the style's own (30)", None)
    guidance_scale: float | None = setting("classifier-free guidance; default: the style's own (7 SD1.5, 5.5 SDXL)", None)
    sampler: str = setting("sampler, named as in AUTOMATIC1111", "dpmpp_2m_karras", choices=("dpmpp_2m_karras", "euler_a", "euler", "ddim"))
    resolution: int | None = setting("image size in pixels; default: the size the LoRA was trained at", None)
    lora: str = setting("which LoRA: final (the run's last step) or best (the validation step most like the person)", "final",
                      choices=("final", "best"))
    token: str | None = setting("the person's token in prompts; default: read from the run's dataset captions", None)
    class_word: str | None = setting("the class word after the token (person, woman, man...); default: from the captions", None)
    styles_file: str | None = setting("YAML or JSON file with your own styles, added to the built-in ones", None)
    vae: str | None = setting("a diffusers VAE folder or hub id replacing the base's (madebyollin/sdxl-vae-fp16-fix: SDXL in fp16 "
                              "without NaN images); default: the one the run trained with", None)


@dataclass(frozen=True)
class Sampler:
    label: str  # AUTOMATIC1111's name, written into the PNG
    scheduler: str  # diffusers class
    options: tuple = ()
    schedule_type: str | None = None  # A1111 1.9+'s "Schedule type" (None: the sampler's own)


# DPM++ 2M with Karras sigmas gives clean portraits in 20-30 steps on SD1.5 and SDXL alike.
SAMPLERS = {
    "dpmpp_2m_karras": Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", (("use_karras_sigmas", True),), "Karras"),
    "euler_a": Sampler("Euler a", "EulerAncestralDiscreteScheduler"),
    "euler": Sampler("Euler", "EulerDiscreteScheduler"),
    "ddim": Sampler("DDIM", "DDIMScheduler"),
}


def sample(config: SampleConfig, styles: dict[str, Style] | None = None, loaded: dict | None = None) -> list[dict]:
    """Render every chosen style and seed; return the manifest (one dict per image).

    `styles` is a style library from `load_styles` (default: the built-ins plus `styles_file`).
    `loaded`, a dict kept by the caller, keeps the pipeline with its LoRA between calls that use
    the same run, LoRA and sampler (`compare_dials`): it is loaded once, not once per call.
    """
    import torch
    from tqdm.auto import tqdm

    from portraitkit.core.grids import image_grid

    check_config(config)
    run_dir, out_dir = Path(config.run_dir), Path(config.out_dir)
    run = read_run(run_dir)
    family = run["base"]["family"]
    chosen = select_styles(styles or style_library(config, family), config.styles)
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
    kohya = lora_dir / lora.KOHYA_FILE
    shared = {
        "lora_scale": config.lora_scale, "sampler": SAMPLERS[config.sampler].label,
        "schedule_type": SAMPLERS[config.sampler].schedule_type, "width": resolution, "height": resolution,
        "model": model, "model_hash": model_hash, "lora": str(lora_dir / lora.LORA_FILE),
        # A1111 names the LoRA by the kohya file it loads, and hashes that file its own way.
        "lora_name": kohya.stem, "lora_hash": lora_hash(kohya) if kohya.is_file() else None,
        "token": token, "class_word": class_word, "vae": config.vae or run["settings"].get("vae"),
    }
    planned = []
    for style in chosen:
        prompt, negative = style.render(token, class_word)
        for seed in range(config.seed, config.seed + config.per_style):
            planned.append({
                "file": f"{style.name}_seed{seed}.png", "style": style.name, "seed": seed, "prompt": prompt,
                "negative_prompt": negative, "steps": config.steps or style.steps,
                "guidance_scale": config.guidance_scale or style.guidance_scale, **shared,
            })

    manifest = _previous_manifest(out_dir)
    # Images an earlier run made with exactly this recipe are kept (a Colab disconnect costs
    # only the image in progress), and the model is not even loaded when none is missing.
    missing = [e for e in planned if not (manifest.get(e["file"]) == e and (out_dir / e["file"]).is_file())]
    if missing:
        loaded = {} if loaded is None else loaded
        key = (str(lora_dir.resolve()), shared["lora_hash"], config.sampler, shared["vae"])
        if loaded.get("key") != key:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            loaded.update(key=key, pipe=load_for_sampling(run["base"]["name"], family, device, config.sampler, vae=shared["vae"]))
            with quiet():  # "No LoRA keys associated to CLIPTextModel": the LoRA trained the UNet only
                lora.load(loaded["pipe"], lora_dir, adapter_name=ADAPTER)
        pipe = loaded["pipe"]
        # Scale 0 keeps the adapter in place but multiplies its output by zero: the base model's image.
        pipe.set_adapters(ADAPTER, adapter_weights=config.lora_scale)
    for entry in tqdm(missing, desc="sampling portraits", unit="img"):
        generator = torch.Generator("cpu").manual_seed(entry["seed"])
        with torch.inference_mode():
            array = pipe(entry["prompt"], negative_prompt=entry["negative_prompt"], num_inference_steps=entry["steps"],
                         guidance_scale=entry["guidance_scale"], height=resolution, width=resolution, generator=generator,
                         output_type="np").images
        if problem := decode_problem(array):  # never save a black square as a portrait
            raise PortraitkitError(f"{entry['file']}: {problem}")
        image = pipe.numpy_to_pil(array)[0]
        save_image(out_dir / entry["file"], image, pnginfo=png_parameters(entry))
        manifest[entry["file"]] = entry
        write_json(out_dir / MANIFEST, list(manifest.values()))
    write_json(out_dir / MANIFEST, list(manifest.values()))

    from PIL import Image

    for style in chosen:
        files = [e["file"] for e in planned if e["style"] == style.name]
        with_images = [Image.open(out_dir / name).convert("RGB") for name in files]
        save_image(out_dir / "grids" / f"{style.name}.png", image_grid(with_images, columns=min(4, len(with_images))))
    return planned


def check_config(config: SampleConfig) -> None:
    """The settings' mistakes, each in one sentence, before the run is read or a model loaded."""
    check_at_least({"per_style": config.per_style, "steps": config.steps}, 1)
    check_at_least({"guidance_scale": config.guidance_scale, "seed": config.seed}, 0)
    check_resolution(config.resolution)


def style_library(config: SampleConfig, family: str | None = None) -> dict[str, Style]:
    """The styles a sampling run chooses from: the built-ins for the run's model family (read
    from the run when not given) plus the config's styles file."""
    family = family or read_run(Path(config.run_dir))["base"]["family"]
    return load_styles(*([config.styles_file] if config.styles_file else []), family=family)


def compare_dials(config: SampleConfig, out_dir: str | Path, styles: dict[str, Style] | None = None,
                  guidance_scales=(3.0, 7.0, 12.0), lora_scales=(0.0, 0.5, 1.0)):
    """What guidance and LoRA strength do, side by side: the first chosen style at the first seed,
    rendered at each guidance scale (top row) and at each LoRA strength (bottom row). Returns
    that grid; each variant is an ordinary sampling run in its own folder under `out_dir`, so its
    image carries its recipe and a re-run after a disconnect renders only what is missing."""
    from PIL import Image

    from portraitkit.core.grids import image_grid

    styles = styles or style_library(config)
    first = select_styles(styles, config.styles)[0]
    one = dataclasses.replace(config, styles=[first.name], per_style=1)
    variants = [(f"guidance_{g:g}", {"guidance_scale": g}) for g in guidance_scales]
    variants += [(f"strength_{s:g}", {"lora_scale": s}) for s in lora_scales]
    images, loaded = [], {}
    for folder, change in variants:
        variant = dataclasses.replace(one, out_dir=str(Path(out_dir) / folder), **change)
        [entry] = sample(variant, styles=styles, loaded=loaded)  # one pipeline for all six
        images.append(Image.open(Path(variant.out_dir) / entry["file"]).convert("RGB"))
    return image_grid(images, columns=max(len(guidance_scales), len(lora_scales)))


# --- the run and the person -------------------------------------------------------------------


def read_run(run_dir: Path) -> dict:
    """The run's config.json, or a clear error for a folder that is not a finished run."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise PortraitkitError(f"{run_dir} is not a training run (it has no config.json): pass the --out folder of `portraitkit train`")
    return read_json(path, "restore it from a copy, or train the run again", keys=("settings", "base"))


CAPTION_WORDS = re.compile(r"\bphoto of (?:an? )?(\S+) (\w+)")


def person_words(run: dict, token: str | None = None, class_word: str | None = None) -> tuple[str, str]:
    """The token and class word the LoRA was trained with.

    Given ones win. Otherwise they come from the run's dataset: the values prep recorded in its
    report.json, else the words after "photo of" shared by every caption in metadata.jsonl.
    """
    if token and class_word:
        return token, class_word
    dataset = Path(run["settings"]["dataset_dir"])
    if not dataset.is_dir():
        raise PortraitkitError(f"the run's dataset {dataset} is not there (moved or deleted?), so the person's token and class word "
                               "are unknown: pass them with --token and --class-word, as given to `portraitkit prep`")
    found = _words_from_report(dataset / "report.json") or _words_from_captions(dataset / "metadata.jsonl")
    if found is None:
        raise PortraitkitError(
            f"could not tell the person's token and class word from the run's dataset ({dataset}): "
            "pass them with --token and --class-word, as given to `portraitkit prep` (e.g. --token sks --class-word person)"
        )
    return token or found[0], class_word or found[1]


def _words_from_report(path: Path) -> tuple[str, str] | None:
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    for section in (report, report.get("summary"), report.get("config"), report.get("settings")):
        if isinstance(section, dict) and section.get("token") and section.get("class_word"):
            return str(section["token"]), str(section["class_word"])
    return None


def _words_from_captions(path: Path) -> tuple[str, str] | None:
    if not path.is_file():
        return None
    from portraitkit.core.files import read_jsonl

    found = {match.groups() for row in read_jsonl(path) if (match := CAPTION_WORDS.search(str(row.get("text", ""))))}
    return found.pop() if len(found) == 1 else None  # several answers: better to ask than to guess


def _previous_manifest(out_dir: Path) -> dict[str, dict]:
    path = out_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        return {entry["file"]: entry for entry in json.loads(path.read_text(encoding="utf-8"))}
    except (json.JSONDecodeError, TypeError, KeyError):
        raise PortraitkitError(f"{path} is not a portraitkit manifest: choose an empty --out folder") from None


# --- the pipeline -----------------------------------------------------------------------------


def load_for_sampling(base: str, family: str, device: str, sampler: str = "dpmpp_2m_karras", vae: str | None = None):
    """The base pipeline, set up for a T4: fp16 weights, memory-light VAE decoding for SDXL."""
    import diffusers
    import torch

    from portraitkit.models.bases import load_pipeline

    pipe = load_pipeline(base, dtype=torch.float16 if device == "cuda" else torch.float32, vae=vae)
    choice = SAMPLERS[sampler]
    pipe.scheduler = getattr(diffusers, choice.scheduler).from_config(pipe.scheduler.config, **dict(choice.options))
    if family == "sdxl":
        # SDXL's VAE overflows in fp16, so diffusers decodes in fp32: several GB at 1024 px.
        # Slicing decodes a batch one image at a time; tiling decodes in overlapping tiles for
        # sizes above the VAE's tile size. Attention needs no slicing: PyTorch 2's fused
        # attention already avoids the quadratic memory (and slicing would slow it down).
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    return pipe.to(device)
