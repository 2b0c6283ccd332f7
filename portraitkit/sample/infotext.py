"""AUTOMATIC1111's PNG infotext: the recipe in the `parameters` text chunk, in its own layout, so
that its PNG Info tab, "send to txt2img" and the sites that match models by hash read our images.

The layout (A1111 1.9+): the prompt, with the LoRA as `<lora:NAME:SCALE>`; `Negative prompt: ...`;
then one line of `Key: value` pairs, a value holding `,`, `:` or a newline JSON-quoted: `Steps`,
`Sampler` and `Schedule type` (1.9 split "DPM++ 2M Karras" into the two), `CFG scale`, `Seed`,
`Size`, `Model hash`, `Model`, `Lora hashes: "NAME: HASH"`, `Version`. A1111 names a LoRA by its
file's stem and hashes it with the "addnet" hash (below), of the kohya file it would load.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from portraitkit.models.bases import checkpoint_identity


def lora_hash(path: Path) -> str:
    """A1111's short hash of a safetensors LoRA ("addnet" hash): sha256 of the file after its
    8-byte header length and the header, so that editing the metadata does not change it;
    first 12 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def model_identity(base: dict) -> tuple[str, str | None]:
    """(Model, Model hash) for a run's base ({"name", "source"} from its config.json): A1111's
    `Model hash` is the first 10 hex digits of the checkpoint's sha256."""
    name, sha256 = checkpoint_identity(base)
    return name, sha256[:10] if sha256 else None


def a1111_parameters(entry: dict) -> str:
    """The recipe of one image (a manifest entry of `sample`) in A1111's layout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("portraitkit")
    except PackageNotFoundError:
        ours = "dev"
    fields = {"Steps": entry["steps"], "Sampler": entry["sampler"], "Schedule type": entry.get("schedule_type"),
              "CFG scale": entry["guidance_scale"], "Seed": entry["seed"], "Size": f"{entry['width']}x{entry['height']}",
              "Model hash": entry.get("model_hash"), "Model": entry["model"],
              "Lora hashes": f"{entry['lora_name']}: {entry['lora_hash']}", "Style": entry["style"], "Version": f"portraitkit {ours}"}
    settings = ", ".join(f"{key}: {_quoted(value)}" for key, value in fields.items() if value is not None)
    # The manifest keeps the prompt diffusers used; A1111 needs the LoRA named in it.
    prompt = f"{entry['prompt']} <lora:{entry['lora_name']}:{entry['lora_scale']:g}>"
    return f"{prompt}\nNegative prompt: {entry['negative_prompt']}\n{settings}"


def _quoted(value) -> str:
    text = str(value)
    # As A1111 does: a value holding its separators is JSON-quoted.
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:\n') else text


def png_parameters(entry: dict):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", a1111_parameters(entry))
    return info


_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def read_parameters(path) -> dict:
    """The recipe in a PNG written by `sample`, parsed by `parse_parameters` ({} if it has none)."""
    from PIL import Image

    with Image.open(path) as image:
        text = image.text.get("parameters")
    return parse_parameters(text) if text else {}


def parse_parameters(text: str) -> dict:
    """An A1111 `parameters` text as a dict: "prompt", "negative_prompt", then the settings by
    their names ("Steps", "Seed"...)."""
    lines = text.strip().split("\n")
    settings_line = lines.pop() if lines and lines[-1].startswith("Steps:") else ""
    negative_at = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), len(lines))
    result = {"prompt": "\n".join(lines[:negative_at]),
              "negative_prompt": "\n".join(lines[negative_at:])[len("Negative prompt:"):].strip()}
    for key, value in _SETTING.findall(settings_line):
        result[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return result
