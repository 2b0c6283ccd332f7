"""The LoRA adapter itself: where it goes, how it is added, the two files it is saved as.

LoRA (Hu et al. 2021) learns a low-rank update B @ A beside each frozen weight W of the
attention projections; only A and B train. The adapters are peft's, added the way diffusers
adds them, so every loader that reads diffusers' LoRA files reads ours. Two files are written,
in fp16 unless the run says otherwise (`--save-precision`):
- `pytorch_lora_weights.safetensors`, diffusers' format (`pipeline.load_lora_weights(folder,
  weight_name=LORA_FILE)`), with the adapter config diffusers itself writes in its header;
- `<run name>.safetensors`, the kohya format AUTOMATIC1111 and ComfyUI read (`kohya`), named
  after the run so that several people's LoRAs sit side by side in their `models/Lora` folder.

Both files name modules by the architecture, not by whatever the installed transformers calls
them: transformers 5's `CLIPTextModel` dropped the `text_model.` level that every other tool
(and transformers 4) has, so it is put back (`canonical_name`).
"""

from __future__ import annotations

import weakref
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import atomic_path
from portraitkit.models import families, kohya, runs
# re-exported: the planner's tracer and the notebooks add adapters through here
from portraitkit.models.adapters import TEXT_ENCODER_TARGETS, add_adapters, text_encoder_targets  # noqa: F401
from portraitkit.models.families.sd import UNET_TARGETS  # noqa: F401

LORA_FILE = "pytorch_lora_weights.safetensors"
# The kohya file is `<run name>.safetensors` (`kohya_file`); runs made before were given this name.
OLD_KOHYA_FILE = "pytorch_lora_weights_kohya.safetensors"
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def text_encoders(pipe) -> list:
    """The pipeline's text encoders: one for SD1.x and FLUX.2, two for SDXL."""
    return families.of(pipe).text_encoders_of(pipe)


def denoiser(pipe):
    """The model that predicts: SD's UNet, or FLUX.2's transformer."""
    return families.of(pipe).denoiser_of(pipe)


def models(pipe) -> dict:
    """{component: model} of the pipeline's models that can carry adapters (FLUX.2's Qwen3 encoder never does)."""
    return families.of(pipe).adaptable(pipe)


def add_to_pipeline(pipe, rank: int, alpha: float | None, train_text_encoder: bool, use_dora: bool = False,
                    targets: str = "attention") -> dict:
    """Freeze the base and attach adapters to its UNet or transformer (and SD's text encoders);
    return {name: module that trains}. Which layers learn is the family's (`Family.add_lora`):
    SD's UNet attention projections, FLUX.2's by `targets` ("attention" or "attention+mlp")."""
    for module in [denoiser(pipe), pipe.vae, *text_encoders(pipe)]:
        module.requires_grad_(False)
    return families.of(pipe).add_lora(pipe, rank, alpha, train_text_encoder, use_dora, targets)


def canonical_name(component: str, name: str) -> str:
    """A module's name as the architecture has it: CLIP text models with their `text_model.` level."""
    if component.startswith("text_encoder") and not name.startswith("text_model."):
        return f"text_model.{name}"
    return name


def lora_layers(pipe, scale: float, train_text_encoder: bool) -> dict[str, dict]:
    """{component: {canonical module name + ".lora_A.weight" / ".lora_B.weight": tensor}}, the
    peft state dicts with the LoRA scale alpha / rank folded into B."""
    from peft.utils import get_peft_model_state_dict

    family = families.of(pipe)
    modules = {family.denoiser: family.denoiser_of(pipe)}
    if train_text_encoder:
        modules.update((name, getattr(pipe, name)) for name in family.trainable_text_encoders)
    layers = {}
    for component, module in modules.items():
        state = get_peft_model_state_dict(module)
        layers[component] = {canonical_name(component, key): (value * scale if ".lora_B." in key else value)
                             for key, value in state.items()}
    return layers


def save(pipe, folder: Path, rank: int, alpha: float | None, train_text_encoder: bool, precision: str | None = None) -> Path:
    """Write the LoRA in the diffusers format and the same weights in the kohya format, named
    after the run. `precision` (fp32, fp16, bf16) defaults to the run's --save-precision (fp16:
    kohya's default, half the size of fp32). The run's config.json (train writes it first)
    gives the kohya header its name and facts."""
    from safetensors.torch import save_file

    folder = Path(folder)
    run_dir = runs.run_of(folder)
    run = runs.read_run(run_dir) if run_dir is not None else None
    precision = precision or (run["settings"].get("save_precision") if run else None) or "fp16"
    dtype = _dtype(precision)
    # The diffusers format stores no alpha (loaders take alpha = rank), so the scale alpha / rank
    # is folded into the B ("up") matrices: both files then apply exactly the trained update.
    layers = lora_layers(pipe, (alpha or rank) / rank, train_text_encoder)
    with atomic_path(folder / LORA_FILE) as tmp:
        tensors, metadata = diffusers_file(layers, rank)
        save_file({key: value.to(dtype).contiguous() for key, value in tensors.items()}, tmp, metadata=metadata)
    dora = any(key.endswith(".lora_magnitude_vector") for state in layers.values() for key in state)
    name = runs.run_name(folder)
    with atomic_path(folder / f"{name}.safetensors") as tmp:
        family = families.of(pipe)
        save_file(family.kohya_state_dict(layers, rank, models(pipe), dtype), tmp,
                  metadata=kohya.header(name, family, rank, dora, run, _run_facts(run)))
    return folder / LORA_FILE


def _dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def kohya_file(folder: Path) -> Path:
    """Where the kohya file of a run folder (or of its best/) is: `<run name>.safetensors`, or,
    for a run written before portraitkit named it so, the old name."""
    folder = Path(folder)
    named, old = folder / f"{runs.run_name(folder)}.safetensors", folder / OLD_KOHYA_FILE
    return old if old.is_file() and not named.is_file() else named


def where_the_files_go(run_dir: Path) -> list[str]:
    """What `portraitkit train` prints last: which of the run's files goes into which tool."""
    run_dir = Path(run_dir)
    run = runs.read_run(run_dir)
    kohya_path, dora = kohya_file(run_dir), run["settings"].get("dora")
    if not families.named(run["base"].get("family", "sd")).runs_in_a1111:  # FLUX.2: ComfyUI and diffusers, not A1111
        return [f"LoRA saved in {run_dir}:",
                f"  {kohya_path.name}: for ComfyUI (models/loras, LoraLoaderModelOnly on a FLUX.2 [klein] 4B model)",
                f"  {LORA_FILE}: for diffusers, Flux2KleinPipeline's load_lora_weights(\"{run_dir}\", weight_name=\"{LORA_FILE}\")"]
    lines = [f"LoRA saved in {run_dir}:",
             f"  {kohya_path.name}: for AUTOMATIC1111 (its models/Lora folder; prompt <lora:{kohya_path.stem}:1>) "
             "and ComfyUI (models/loras, LoraLoader)",
             f"  {LORA_FILE}: for diffusers, pipe.load_lora_weights(\"{run_dir}\", weight_name=\"{LORA_FILE}\"); "
             "ComfyUI maps none of its UNet keys (\"lora key not loaded\"): give ComfyUI and A1111 the file above"]
    if dora:
        lines.append("  DoRA renders exactly in diffusers and ComfyUI; AUTOMATIC1111 1.10 computes DoRA per input column, "
                     "so its images of this LoRA differ (train without --dora for A1111)")
    return lines


def diffusers_file(layers: dict[str, dict], rank: int) -> tuple[dict, dict[str, str]]:
    """The diffusers file's tensors (`<component>.<module>...` in diffusers' naming) and header.

    The header holds what diffusers' own `save_lora_weights` writes beside the weights since
    0.35 (`lora_adapter_metadata`: each component's LoRA config). With it, diffusers builds the
    config from the file instead of matching keys to module names, which diffusers 0.39 (Colab's)
    gets wrong for transformers 5's CLIPTextModel (no `text_model.` level: IndexError,
    huggingface/diffusers#13984). Its module names leave `text_model.` out, so they match with and
    without that level (peft matches a target by the end of a module's name)."""
    import json

    from diffusers.utils import convert_state_dict_to_diffusers

    tensors, configs = {}, {}
    for component, state in layers.items():
        # The UNet's keys take diffusers' older `lora.down`/`lora.up` names, which its SD loaders
        # expect; a transformer's are saved as peft names them, as diffusers' own save does.
        named = state if component == "transformer" else convert_state_dict_to_diffusers(state)
        for key, value in named.items():
            if component.startswith("text_encoder") and key.endswith(".lora_magnitude_vector"):
                # transformers 5 loads adapters by parameter name, and a DoRA magnitude is the
                # `weight` of peft's DoraLinearLayer: without the suffix it is silently re-initialised.
                key += ".weight"
            tensors[f"{component}.{key}"] = value
        targets = sorted({key.rsplit(".lora_", 1)[0].removeprefix("text_model.") for key in state})
        dora = any(key.endswith(".lora_magnitude_vector") for key in state)
        configs.update({f"{component}.{field}": value for field, value in {
            "r": rank, "lora_alpha": rank, "target_modules": targets, "use_dora": dora, "rank_pattern": {}, "alpha_pattern": {},
        }.items()})
    return tensors, {"format": "pt", "lora_adapter_metadata": json.dumps(configs, indent=2, sort_keys=True)}


def _run_facts(run: dict | None) -> dict:
    """What the kohya header says beyond the settings: the run's resolution, images, trigger
    words, caption tags and base checkpoint. Anything unknown is left out: a header fact is
    never worth losing a trained LoRA over."""
    from portraitkit.models.bases import checkpoint_identity, native_resolution

    if run is None:
        return {}
    facts = {}
    captions = runs.captions(run)
    if captions:
        facts.update(images=len(captions), tags=kohya.tag_frequency(captions))
    for fact, find in [("trigger", lambda: " ".join(runs.person_words(run))),
                       ("resolution", lambda: run["settings"].get("resolution") or native_resolution(run["base"]["source"]))]:
        try:
            facts[fact] = find()
        except PortraitkitError:  # the dataset moved, the base's config is not at hand
            pass
    facts["model_name"], facts["model_sha256"] = checkpoint_identity(run["base"])
    return facts


def set_strength(pipe, adapter_name: str, strength: float) -> None:
    """Set the LoRA's strength as A1111 and ComfyUI define it, for LoRA and DoRA alike: every
    adapted weight W becomes W + s (W' - W), W' the trained weight; 0 is the base exactly, 1 the
    trained model, 0.5 halfway.

    For a plain LoRA that is peft's adapter weight (W + s dW). Not for DoRA: its
    W' = m (W + dW) / ||W + dW|| is not linear in dW, and peft's weight scales dW alone (at 0 the
    magnitudes still rescale W). So a DoRA layer keeps weight 1 and its output is moved towards
    its base layer's by a forward hook: W x + s (W' x - W x) is the interpolated weight's output."""
    import peft

    layers = [module for model in (denoiser(pipe), *text_encoders(pipe)) for module in model.modules()
              if isinstance(module, peft.tuners.lora.LoraLayer) and module.use_dora.get(adapter_name)]
    pipe.set_adapters(adapter_name, adapter_weights=1.0 if layers else strength)
    for layer in layers:
        if layer not in _DORA_STRENGTH:
            layer.register_forward_hook(_towards_base)
        _DORA_STRENGTH[layer] = strength


_DORA_STRENGTH = weakref.WeakKeyDictionary()  # DoRA layer -> the strength `set_strength` gave it


def _towards_base(layer, args, output):
    strength = _DORA_STRENGTH.get(layer, 1.0)
    if strength == 1.0:
        return None  # the layer's own output
    base = layer.base_layer(args[0])
    return base + strength * (output - base)


def load(pipe, folder: Path, adapter_name: str | None = None, weight_name: str = LORA_FILE) -> None:
    """Load a run's LoRA (diffusers format by default) into a pipeline, as any diffusers user would.

    The file is read here and its tensors handed to `load_lora_weights`, brought up to date on
    the way for files written before portraitkit wrote the header above: diffusers before 0.40
    puts their `text_encoder.text_model.` keys into transformers 5's `CLIPTextModel` without
    stripping the level it lacks, and fails, so the level is dropped for an encoder that has
    none; their text encoders' DoRA magnitudes get the `.weight` transformers 5 needs. (Reading
    the file ourselves also spares diffusers up to 0.39 its offline-mode error for a folder given
    without `weight_name`.)"""
    from safetensors.torch import load_file

    state = load_file(Path(folder) / weight_name)
    for component, encoder in zip(["text_encoder", "text_encoder_2"], text_encoders(pipe)):
        if not hasattr(encoder, "text_model"):
            level = f"{component}.text_model."
            state = {(f"{component}." + key[len(level):] if key.startswith(level) else key): value for key, value in state.items()}
    state = {(f"{key}.weight" if key.startswith("text_encoder") and key.endswith(".lora_magnitude_vector") else key): value
             for key, value in state.items()}
    pipe.load_lora_weights(state, adapter_name=adapter_name)
