"""Style presets: the prompt, negative prompt, guidance and steps of one kind of portrait.

The built-in styles live in `assets/styles.yaml` (read it: the comments explain the choices).
Users add or change styles without touching the package, from a YAML or JSON file or a Python
dict of the same shape:

    styles = load_styles("my_styles.yaml", family="sd")
    styles = load_styles({"beach": {"description": "On the beach", "prompt": "photo of {token} {class_word} on a beach"}})

A style that reuses a built-in name changes only the fields it sets; a new style takes what it
leaves out (negative prompt, guidance, steps) from the defaults of the model family.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from portraitkit.models import families
from portraitkit.core.errors import PortraitkitError

FAMILIES = families.names()  # a style may have a section for each
# What `portraitkit sample` renders when no --styles are given: four looks people most often
# want, 16 images at the default 4 per style (a few minutes for SD1.5 on a T4).
DEFAULT_STYLES = ("studio", "natural", "outdoor", "corporate")

_FIELDS = {"description", "prompt", "negative_prompt", "negative_prompt_extra", "guidance_scale", "steps"}
_PLACEHOLDERS = {"token", "class_word"}


@dataclass(frozen=True)
class Style:
    """One style, resolved for a model family: everything the sampler needs."""

    name: str
    description: str
    prompt: str  # template with {token} and {class_word}
    negative_prompt: str
    guidance_scale: float
    steps: int

    def render(self, token: str, class_word: str) -> tuple[str, str]:
        """(prompt, negative prompt) for the person whose LoRA answers to `token class_word`."""
        return self.prompt.format(token=token, class_word=class_word), self.negative_prompt


def builtin_spec() -> dict:
    """The raw content of the built-in styles file."""
    import yaml

    text = (resources.files("portraitkit") / "assets" / "styles.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_styles(*sources: str | os.PathLike | Mapping | Style, family: str = "sd") -> dict[str, Style]:
    """The built-in styles plus `sources` (files, dicts or Style objects, later ones win), by name.

    `family` is the base model's: "sd" (Stable Diffusion 1.x/2.x), "sdxl" or "flux2" (FLUX.2 [klein]).
    """
    families.named(family)  # an unknown family, in one sentence
    spec = builtin_spec()
    defaults, raw = spec["defaults"], dict(spec["styles"])
    ready: dict[str, Style] = {}
    for source in sources:
        if isinstance(source, Style):
            ready[source.name] = source
            raw.pop(source.name, None)
            continue
        where = "your styles" if isinstance(source, Mapping) else str(source)
        user = source if isinstance(source, Mapping) else read_style_file(source)
        if "defaults" in user:
            raise PortraitkitError(f"{where} sets `defaults`, which only the built-in file has: set those fields on each of your styles")
        user = user["styles"] if isinstance(user.get("styles"), Mapping) else user
        for name, fields in user.items():
            _check_fields(name, fields, where)
            raw[name] = _merge(raw.get(name, {}), fields)
            ready.pop(name, None)
    styles = {name: resolve_style(name, fields, defaults, family) for name, fields in raw.items()}
    return {**styles, **ready}


def read_style_file(path: str | os.PathLike) -> dict:
    """A user's styles file: YAML (.yaml/.yml) or JSON (.json), a mapping of name to fields."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PortraitkitError(f"styles file {path} does not exist: check the path")
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise PortraitkitError(f"{path.name} is not valid {kind} ({_where(error)}): fix the file") from None
    if not isinstance(data, Mapping) or not data:
        raise PortraitkitError(f"{path.name} must map style names to their fields (description, prompt, ...)")
    return dict(data)


def _where(error: Exception) -> str:
    """What the parser found and where, as an editor counts (line and column from 1)."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg}: line {error.lineno}, column {error.colno}"
    parts = []  # PyYAML's MarkedYAMLError: what it was reading where (an opening quote), then the problem; 0-based
    for text, mark in ((getattr(error, "context", None), getattr(error, "context_mark", None)),
                       (getattr(error, "problem", None), getattr(error, "problem_mark", None))):
        if text:
            parts.append(f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark else text)
    return ": ".join(parts) or str(error).splitlines()[0]


def resolve_style(name: str, fields: Mapping[str, Any], defaults: Mapping[str, Any], family: str) -> Style:
    """family defaults < the style's own fields < the style's fields for this family."""
    own = fields.get(family, {})
    lender = families.named(family).prompts_from
    if lender and not own and "prompt" in fields.get(lender, {}):
        # FLUX.2's Qwen3 encoder reads whole sentences, as SDXL's encoders do: a style without a
        # flux2 section takes its SDXL prompt (not its negative words: klein's defaults have none)
        own = {"prompt": fields[lender]["prompt"]}
    merged = {**defaults.get(family, {}), **{k: v for k, v in fields.items() if k not in FAMILIES}, **own}
    if not merged.get("prompt"):
        raise PortraitkitError(f"style '{name}' has no prompt for {family} models: add `prompt` (with {{token}} and {{class_word}})")
    prompt = " ".join(str(merged["prompt"]).split())
    used = {field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None}
    if used != _PLACEHOLDERS:
        unknown = used - _PLACEHOLDERS
        problem = f"uses unknown placeholders {sorted(unknown)}" if unknown else f"lacks {sorted(_PLACEHOLDERS - used)}"
        raise PortraitkitError(f"the prompt of style '{name}' {problem}: it must contain {{token}} and {{class_word}} and nothing else in braces")
    negative = ", ".join(part for part in (merged.get("negative_prompt"), merged.get("negative_prompt_extra")) if part)
    try:
        guidance, steps = float(merged["guidance_scale"]), int(merged["steps"])
    except (KeyError, TypeError, ValueError):
        raise PortraitkitError(f"style '{name}' needs a numeric guidance_scale and a whole number of steps") from None
    if guidance < 1 or steps < 1:
        raise PortraitkitError(f"style '{name}': guidance_scale must be at least 1 and steps at least 1")
    description = " ".join(str(merged.get("description") or "your own style").split())
    return Style(name, description, prompt, " ".join(negative.split()), guidance, steps)


def _check_fields(name: str, fields: Any, where: str, allowed: set = _FIELDS | set(FAMILIES)) -> None:
    """Catch typos (`negative:`) here, where the message can name the style and the file."""
    if not isinstance(fields, Mapping):
        raise PortraitkitError(f"style '{name}' in {where} must be a mapping of fields (description, prompt, ...)")
    for key, value in fields.items():
        if key not in allowed:
            raise PortraitkitError(f"style '{name}' in {where} has an unknown field '{key}': use {', '.join(sorted(allowed))}")
        if key in FAMILIES:
            _check_fields(f"{name}.{key}", value, where, _FIELDS)


def _merge(base: Mapping, override: Mapping) -> dict:
    """Override's fields win; the per-family sections are merged field by field too."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = {**base.get(key, {}), **value} if key in FAMILIES else value
    return merged


def select_styles(styles: Mapping[str, Style], names: list[str] | None) -> list[Style]:
    """The named styles in the order given (default: DEFAULT_STYLES), or a clear error."""
    names = list(names) if names else [name for name in DEFAULT_STYLES if name in styles]
    unknown = [name for name in names if name not in styles]
    if unknown:
        raise PortraitkitError(f"unknown style(s) {', '.join(unknown)}: choose from {', '.join(styles)} (or add your own with --styles-file)")
    return [styles[name] for name in dict.fromkeys(names)]
