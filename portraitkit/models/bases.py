"""Base models: named presets, the offline tiny bases, and loading with clear errors.

`--base` accepts a preset name (`sd15`, `sdxl`, `tiny-sd`, `tiny-sdxl`), any Hugging Face repo
id, or a local diffusers folder. Every one of them goes through the same diffusers
`from_pretrained` path; the tiny presets are simply folders that portraitkit writes itself.

The tiny bases are the real Stable Diffusion 1.5 and SDXL architectures (UNet2DConditionModel,
AutoencoderKL, CLIP text encoder(s) and tokenizer(s), SDXL's second encoder and added
time/text conditioning) at toy size, with random weights from fixed seeds. They make tests, CI
and the CPU demo run offline in seconds. Their pictures are noise-like, never portraits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import shareable
from portraitkit.models import families
from portraitkit.models.klein import KLEIN_REPO

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
# Bumped whenever a tiny config changes, so stale cached folders are rebuilt, never reused.
TINY_VERSION = 3


@dataclass(frozen=True)
class BaseSpec:
    """Where a base model comes from and which family of pipeline reads it."""

    name: str  # what the user asked for: a preset, a repo id or a folder
    source: str  # the repo id or local folder given to `from_pretrained`
    family: str  # "sd" (SD1.x/2.x UNet with one text encoder), "sdxl", or "flux2" (FLUX.2 [klein]: `models.klein`)
    offline: bool  # True for the tiny bases and local folders: no network is needed

    @property
    def pipeline_class(self):
        return families.named(self.family).pipeline_class()


PRESETS = {"sd15": (SD15_REPO, "sd"), "sdxl": (SDXL_REPO, "sdxl"), "klein4b": (KLEIN_REPO, "flux2")}
TINY_PRESETS = {"tiny-sd": "sd", "tiny-sdxl": "sdxl", "tiny-klein": "flux2"}
# Said on the command line and in the notebooks alike, so it names both ways of choosing the base.
OFFLINE_HINT = ('for a run without a network choose the offline toy base tiny-sd (--base tiny-sd; in a notebook, BASE = "tiny-sd" '
                "in its parameters cell): its images are noise, not portraits")


def cache_dir() -> Path:
    """Where portraitkit keeps the tiny bases; PORTRAITKIT_CACHE overrides it."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "portraitkit"
    return Path(os.environ.get("PORTRAITKIT_CACHE", default))


def resolve_base(name: str) -> BaseSpec:
    """Turn what the user typed into a BaseSpec, building a tiny base on first use.

    For hub ids this reads only the small `model_index.json`, so a typo, a missing network or
    a gated model fails here in a second with a clear message, not after minutes of loading.
    """
    preset_family = TINY_PRESETS.get(name) or PRESETS.get(name, (None, None))[1]
    if preset_family:
        families.named(preset_family).require_libraries()  # before building or reading anything
    if name in TINY_PRESETS:
        return BaseSpec(name, str(tiny_base_folder(name)), TINY_PRESETS[name], offline=True)
    if name in PRESETS:
        repo, family = PRESETS[name]
        return BaseSpec(name, repo, family, offline=False)
    folder = Path(name).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise PortraitkitError(f"{folder} is not a diffusers model folder (it has no model_index.json)")
        return BaseSpec(name, str(folder), _family(json.loads(index.read_text())), offline=True)
    return BaseSpec(name, name, _family(hub_model_index(name)), offline=False)


def check_available(name: str) -> BaseSpec:
    """`resolve_base`, and for a preset on the hub the same quick look as for any hub id: run
    before a stage's slow work, so `--base sd15` without a network fails in seconds, not after prep."""
    spec = resolve_base(name)
    if not spec.offline and name in PRESETS:
        hub_model_index(spec.source)
    return spec


def hub_model_index(repo: str) -> dict:
    """A hub model's model_index.json: from the local cache when it is there (no network needed),
    else after one request without retries. huggingface_hub's own download retries for about 40 s
    when nothing is cached, which is how long a typo or a missing network would otherwise take."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo, "model_index.json")
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text(encoding="utf-8"))
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set and the model is not in the Hugging Face cache")
        get_hf_file_metadata(hf_hub_url(repo, "model_index.json"), timeout=10)
        from portraitkit.core.quiet import quiet

        with quiet():
            from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(repo)
    except Exception as error:  # huggingface_hub raises many types: offline, 401, 404, bad id
        raise base_unavailable(repo, error) from None


def _family(model_index: dict) -> str:
    family = families.of_pipeline_class(model_index.get("_class_name", ""))
    family.require_libraries()
    return family.name


def base_unavailable(name: str, error: Exception) -> PortraitkitError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return PortraitkitError(
        f"could not load base model '{name}' ({reason[:200]}). Check the spelling (presets: "
        f"{', '.join([*PRESETS, *TINY_PRESETS])}), your network, and whether the model asks you to accept "
        f"its licence and log in with `hf auth login`; {OFFLINE_HINT}."
    )


def load_pipeline(name: str, dtype=None, device=None, vae: str | None = None, transformer_nf4: bool = False):
    """Load a base as a diffusers text-to-image pipeline (safety checker off: portraits of the user).

    Half-precision loads ask for the repo's fp16 files first, which halves the download and the
    host RAM needed while loading (free Colab has ~12.7 GB), then fall back to the full files.
    `vae` replaces the base's VAE (see `load_vae`). `transformer_nf4`: a FLUX.2 base's transformer
    in bitsandbytes' 4-bit NF4, on the GPU (`klein.load_transformer_nf4`).
    """
    import torch

    spec = resolve_base(name)
    # safetensors only: a repository with nothing but pickled .bin weights is refused, not unpickled
    kwargs = {"torch_dtype": dtype or torch.float32, "use_safetensors": True}
    if vae:
        kwargs["vae"] = load_vae(vae, kwargs["torch_dtype"])
    kwargs.update(families.named(spec.family).load_arguments())  # SD: no safety checker (portraits of the user)
    if transformer_nf4:
        from portraitkit.models.klein import load_transformer_nf4

        kwargs["transformer"] = load_transformer_nf4(spec.source)
    tries = [{"variant": "fp16"}, {}] if dtype == torch.float16 and not spec.offline else [{}]
    for attempt, extra in enumerate(tries):
        try:
            # a toy base loads in a moment from this machine: its "Loading weights" bars say nothing
            with warnings.catch_warnings(), no_loading_bars() if spec.offline else contextlib.nullcontext():
                # diffusers >= 0.40 renamed torch_dtype to dtype; Colab's 0.39 knows only torch_dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*")
                pipeline = spec.pipeline_class.from_pretrained(spec.source, **kwargs, **extra)
            break
        except Exception as error:
            if attempt + 1 == len(tries):
                raise base_unavailable(name, error) from None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device) if device is not None else pipeline


def load_vae(source: str, dtype):
    """A diffusers VAE from a folder (with config.json) or a hub id, e.g. madebyollin/sdxl-vae-fp16-fix:
    SDXL's own VAE overflows to NaN in fp16, that one was fine-tuned not to (diffusers' SDXL
    training scripts take the same option)."""
    from diffusers import AutoencoderKL

    folder = Path(source).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise PortraitkitError(f"{folder} is not a diffusers VAE folder (it has no config.json): pass the folder that holds it, "
                               "or a hub id such as madebyollin/sdxl-vae-fp16-fix")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*")
            return AutoencoderKL.from_pretrained(str(folder) if folder.is_dir() else source, torch_dtype=dtype)
    except Exception as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise PortraitkitError(f"could not load the VAE '{source}' ({reason}): pass a diffusers VAE folder or hub id, "
                               "e.g. --vae madebyollin/sdxl-vae-fp16-fix") from None


def decode_problem(images) -> str | None:
    """What is wrong with decoded images (a numpy batch in [0, 1]), or None when nothing is.

    A VAE that overflows in fp16 returns NaN, which becomes an all-black picture once saved:
    caught here, before anyone mistakes it for a render."""
    import numpy as np

    images = np.asarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        what = "NaN (not-a-number) pixels"
    elif images.reshape(len(images), -1).max(axis=1).min() < 1 / 255:
        what = "all-black images"
    else:
        return None
    return (f"the VAE decoded {what}: SDXL's VAE overflows in fp16; pass --vae madebyollin/sdxl-vae-fp16-fix "
            "(a VAE fixed for fp16), or use --mixed-precision no to run in fp32")


# --- the offline tiny bases ------------------------------------------------------------------


def toy_notice(name: str) -> str | None:
    """The one line every command prints when it runs a toy base (None for a real one)."""
    if name not in TINY_PRESETS:
        return None
    return (f"{name} is an offline toy base with random weights: its images are noise, not portraits "
            "(for portraits choose --base sd15, sdxl or klein4b, on a GPU)")


def library_versions() -> str:
    """The versions that decide whether a saved tiny base can be read back: a folder that
    transformers 5 saved (a tokenizer.json without vocab.json) fails to load under 4.x."""
    import importlib.metadata as metadata

    return "-".join(f"{package}{'.'.join(metadata.version(package).split('.')[:2])}" for package in ("diffusers", "transformers"))


@contextlib.contextmanager
def no_loading_bars():
    """diffusers' and transformers' loading and saving bars off for the block, then as they were."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    were_on = [(module, module.is_progress_bar_enabled()) for module in (diffusers_logging, transformers_logging)]
    for module, _ in were_on:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, on in were_on:
            if on:
                module.enable_progress_bar()


def tiny_base_folder(preset: str) -> Path:
    """The diffusers folder of a tiny preset, built once (atomically) per version of the libraries
    that write it, then reused."""
    folder = cache_dir() / "bases" / f"{preset}-v{TINY_VERSION}-{library_versions()}"
    if not (folder / "model_index.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build = Path(tempfile.mkdtemp(prefix=f".{preset}-", dir=folder.parent))
        try:
            with no_loading_bars():  # a toy built in a second: no "Writing model shards" bars in a notebook
                build_tiny_pipeline(TINY_PRESETS[preset]).save_pretrained(build, safe_serialization=True)
            try:
                shareable(build).rename(folder)
            except OSError:  # another process finished the same build first: use theirs
                pass
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return folder


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    files = resources.files("portraitkit") / "assets" / "tiny_tokenizer"
    # Positional: transformers 5 names them vocab/merges, 4.x vocab_file/merges_file.
    return CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=77)


def build_tiny_pipeline(family: str):
    """Toy-size SD1.5 / SDXL / FLUX.2 [klein] pipelines (by family name) with the real component
    classes and wiring: FLUX.2's is `klein.build_tiny`, Stable Diffusion's `tiny_stable_diffusion`."""
    from portraitkit.models import klein

    builders = {"sd": lambda: tiny_stable_diffusion(xl=False), "sdxl": lambda: tiny_stable_diffusion(xl=True),
                "flux2": klein.build_tiny}
    return builders[family]()


def tiny_stable_diffusion(xl: bool):
    """Toy-size SD1.5 or SDXL. Sizes follow diffusers' own test models, except the VAE: four blocks
    so that it keeps the real 8x downsampling (64 px images -> 8x8 latents), as the resolution
    arithmetic of the real models then holds for the tiny ones too."""
    import torch

    from portraitkit.core.quiet import quiet

    with quiet():  # import-time notices: image processors without torchvision, optional kernels
        from diffusers import (
            AutoencoderKL,
            EulerDiscreteScheduler,
            PNDMScheduler,
            StableDiffusionPipeline,
            StableDiffusionXLPipeline,
            UNet2DConditionModel,
        )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=4, projection_dim=32, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    unet_common = dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler_common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    if not xl:
        torch.manual_seed(1)
        unet = UNet2DConditionModel(**unet_common, cross_attention_dim=32, attention_head_dim=8)
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(text_config)
        return StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=PNDMScheduler(**scheduler_common, skip_prk_steps=True),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        **unet_common, attention_head_dim=(2, 4), use_linear_projection=True,
        transformer_layers_per_block=(1, 2), cross_attention_dim=64,  # the two encoders' 32 + 32
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers + pooled text
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(text_config)
    torch.manual_seed(3)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tiny_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(**scheduler_common, timestep_spacing="leading"),
    )


def native_resolution(source: str) -> int:
    """The size a base draws best at (512 SD1.5, 1024 SDXL and klein, 64 tiny), from its small config files."""
    from portraitkit.core.quiet import quiet

    with quiet():  # import-time notices of optional kernels
        from diffusers import AutoencoderKL, UNet2DConditionModel

    if Path(source).is_dir() and (Path(source) / "transformer").is_dir() or source == KLEIN_REPO:
        # FLUX.2 has no UNet: its pipeline's default size is 128 latent pixels of 8 (1024), the
        # VAE's `sample_size` says the same and is what the toy base sets to 64.
        try:
            return AutoencoderKL.load_config(source, subfolder="vae")["sample_size"]
        except Exception as error:
            raise base_unavailable(source, error) from None
    try:
        unet = UNet2DConditionModel.load_config(source, subfolder="unet")
        vae = AutoencoderKL.load_config(source, subfolder="vae")
    except Exception as error:  # offline, moved folder, gated repo: say which and what to do
        raise base_unavailable(source, error) from None
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


# --- the base as other tools know it ---------------------------------------------------------

# The checkpoint files A1111 and ComfyUI users have for the presets (their hub repositories are
# diffusers folders holding the same weights): their stems and published SHA-256
# (stable-diffusion-v1-5/stable-diffusion-v1-5 v1-5-pruned-emaonly.safetensors,
# stabilityai/stable-diffusion-xl-base-1.0 sd_xl_base_1.0.safetensors).
KNOWN_CHECKPOINTS = {
    "sd15": ("v1-5-pruned-emaonly", "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"),
    "sdxl": ("sd_xl_base_1.0", "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b"),
}


def checkpoint_identity(base: dict) -> tuple[str, str | None]:
    """(name, sha256) of a run's base ({"name", "source"} from its config.json) as A1111 and
    kohya's metadata name it. A local folder (the tiny bases included) is hashed by its UNet
    weights, as it has no single file; a hub id other than the presets gets no hash (its files
    are not at hand)."""
    import hashlib

    if base["name"] in KNOWN_CHECKPOINTS:
        return KNOWN_CHECKPOINTS[base["name"]]
    folder = Path(base["source"])
    denoiser = "transformer" if (folder / "transformer").is_dir() else "unet"
    weights = sorted((folder / denoiser).glob("diffusion_pytorch_model*.safetensors")) if folder.is_dir() else []
    if not weights:
        return base["source"], None
    digest = hashlib.sha256()
    with open(weights[0], "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return base["name"], digest.hexdigest()
