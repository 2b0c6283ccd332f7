"""One object per model family: what differs between Stable Diffusion 1.x/2.x, SDXL and FLUX.2
[klein], kept together the way trainers keep one model class per architecture.

Training, validation, the cache, sampling and the planner ask a pipeline's family (`of(pipe)`) or a
base's (`named(spec.family)`) and never test which family it is themselves (tests/test_architecture.py
checks that no module outside this folder compares a family's name). A family says:
- what the pipeline is: its diffusers class, the model that predicts (`denoiser`: SD's UNet,
  FLUX.2's transformer), its text encoders and which of them a LoRA may train;
- how a run conditions it: latents (`encode_latents`), captions for the cache (`encode_text`) and
  prompts for validation and sampling (`prompt_embeddings`);
- what it learns: the training schedule, the prediction and its target for a draw (`predict`),
  the loss's weights and guard (`loss_weights`, `check_loss`), the layers a LoRA adapts (`add_lora`),
  the kohya file's names;
- how it samples: the one sampler it insists on, the pipeline call's extra arguments, the
  pipeline's set-up for a T4;
- what it does not do yet, refused before loading (`refuse`).
"""

from __future__ import annotations

import functools

from portraitkit.core.errors import PortraitkitError
from portraitkit.models.families.family import Family
from portraitkit.models.families.flux2 import FLUX2
from portraitkit.models.families.sd import SD, SDXL

__all__ = ["Family", "named", "names", "of", "of_pipeline_class"]


@functools.cache  # asked at every training step: built once
def _registry() -> dict[str, Family]:
    return {family.name: family for family in (SD, SDXL, FLUX2)}


def names() -> tuple[str, ...]:
    """Every family's name."""
    return tuple(_registry())


def named(name: str) -> Family:
    """The family recorded as `name` (a BaseSpec's, a run's config.json, an architecture's)."""
    try:
        return _registry()[name]
    except KeyError:
        raise PortraitkitError(f"unknown model family '{name}': use one of {', '.join(names())}") from None


def of_pipeline_class(class_name: str) -> Family:
    """The family of a diffusers pipeline class (a base's model_index.json names it)."""
    for family in _registry().values():
        if class_name == family.pipeline:
            return family
    if class_name.startswith("StableDiffusion") and "XL" not in class_name:  # SD 2.x and other SD1-shaped pipelines
        return _registry()["sd"]
    if "XL" in class_name:
        return _registry()["sdxl"]
    raise PortraitkitError(f"portraitkit trains Stable Diffusion 1.x/2.x, SDXL and FLUX.2 [klein] models, not {class_name or 'this model'}")


def of(pipe) -> Family:
    """The family of a loaded pipeline, from its class: the same answer its model_index.json gives."""
    return of_pipeline_class(type(pipe).__name__)
