"""The sampling recipe: which sampler draws a portrait, and a style's prompt, negative prompt,
guidance and steps for the person's token.

One recipe for `sample` and for training's validation (`train.validate` imports it; sample never
imports train): a checkpoint is chosen from images drawn exactly as the user will draw them, not
with the base's own scheduler (PNDM for SD1.5) at the pipeline's default guidance.
"""

from __future__ import annotations

from dataclasses import dataclass


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
DEFAULT_SAMPLER = "dpmpp_2m_karras"
# FLUX.2 [klein] samples with its own flow-matching Euler scheduler (its pipeline sets the
# resolution-dependent shift itself); Forge and ComfyUI record it as Euler with the Simple schedule.
FLOW_SAMPLER = "flow_euler"
SAMPLERS[FLOW_SAMPLER] = Sampler("Euler", "FlowMatchEulerDiscreteScheduler", (), "Simple")


def family_sampler(family: str, sampler: str = DEFAULT_SAMPLER) -> str:
    """The sampler a base family draws with: FLUX.2 only with its flow sampler (the default is
    swapped for it), Stable Diffusion with any other."""
    from portraitkit.core.errors import PortraitkitError
    from portraitkit.models import families

    own = families.named(family).own_sampler
    if own:
        if sampler not in (DEFAULT_SAMPLER, own):
            raise PortraitkitError(f"--sampler {sampler} cannot draw with a {families.named(family).label} base: it samples "
                                   f"with {own} (its own flow-matching Euler); leave --sampler out")
        return own
    if sampler == FLOW_SAMPLER:
        raise PortraitkitError(f"--sampler {FLOW_SAMPLER} is FLUX.2's; Stable Diffusion bases draw with {DEFAULT_SAMPLER}, "
                               "euler_a, euler or ddim")
    return sampler


def make_scheduler(sampler: str, scheduler_config):
    """The diffusers scheduler of `sampler` (a SAMPLERS key) on a base's scheduler config."""
    import diffusers

    choice = SAMPLERS[sampler]
    return getattr(diffusers, choice.scheduler).from_config(scheduler_config, **dict(choice.options))


def draws(styles: list, token: str, class_word: str, seeds, steps: int | None = None,
          sampler: str = DEFAULT_SAMPLER) -> list[dict]:
    """One recipe per style and seed, styles first: style, seed, prompt, negative_prompt,
    guidance_scale, steps (the style's own unless `steps` is given), sampler and schedule_type."""
    chosen = SAMPLERS[sampler]
    rows = []
    for style in styles:
        prompt, negative = style.render(token, class_word)
        rows += [{"style": style.name, "seed": seed, "prompt": prompt, "negative_prompt": negative,
                  "guidance_scale": style.guidance_scale, "steps": steps or style.steps,
                  "sampler": chosen.label, "schedule_type": chosen.schedule_type} for seed in seeds]
    return rows
