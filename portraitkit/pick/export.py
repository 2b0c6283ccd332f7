"""Taking the chosen portraits home: a zip (and optionally a Drive folder) with their recipes.

A recipe is everything needed to make the same picture again: style, prompt, negative prompt,
seed, steps, guidance, LoRA scale (from the sampling stage's manifest.json), the ranking's
scores (from ranking.json), and the AUTOMATIC1111-style `parameters` text each PNG carries,
which that tool's "PNG Info" tab reads back. The images keep that text chunk in the zip too.

The learner's choice is saved as `picks.json` beside the images at every tick of a checkbox,
so a Colab disconnect between picking and exporting loses nothing.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import atomic_path, write_json, write_text

PICKS_FILE = "picks.json"


def load_picks(images_dir: str | Path) -> list[str]:
    """The file names saved as picked in `images_dir`, or [] if none were saved yet."""
    path = Path(images_dir) / PICKS_FILE
    if not path.is_file():
        return []
    return [str(name) for name in json.loads(path.read_text(encoding="utf-8"))]


def save_picks(images_dir: str | Path, files: list[str]) -> Path:
    """Record the picked file names (relative to `images_dir`), in the order given."""
    return write_json(Path(images_dir) / PICKS_FILE, list(dict.fromkeys(files)))


def _records(images_dir: Path, name: str) -> list[dict]:
    path = images_dir / name
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PortraitkitError(f"{path} is not valid JSON ({error.msg}); run the stage that writes it again") from None
    return rows if isinstance(rows, list) else []


def recipes(images_dir: str | Path, files: list[str]) -> list[dict]:
    """One recipe per file: ranking scores, the manifest's settings, and the PNG's parameters text."""
    from PIL import Image

    images_dir = Path(images_dir)
    manifest = {row.get("file"): row for row in _records(images_dir, "manifest.json")}
    ranking = {row.get("file"): row for row in _records(images_dir, "ranking.json")}
    out = []
    for name in files:
        path = images_dir / name
        if not path.is_file():
            raise PortraitkitError(f"{path} is missing; pick among the images that are in {images_dir}")
        with Image.open(path) as image:
            parameters = image.info.get("parameters")
        out.append({"file": name, **ranking.get(name, {}), **manifest.get(name, {}), "parameters": parameters})
    return out


def _recipes_text(rows: list[dict]) -> str:
    """A readable version: one block per picture, its A1111 parameters when the PNG has them."""
    blocks = []
    for row in rows:
        head = row["file"]
        if row.get("rank") is not None:
            head += f"  (rank {row['rank']}, score {row.get('score')})"
        body = row.get("parameters") or "\n".join(f"{key}: {value}" for key, value in row.items() if key not in ("file", "parameters"))
        blocks.append(f"{head}\n{body}")
    return "\n\n".join(blocks) + "\n"


def export_picks(images_dir: str | Path, files: list[str], zip_path: str | Path, copy_to: str | Path | None = None) -> Path:
    """Write `zip_path` holding the picked images and their recipes; also copy them to `copy_to`.

    The zip has `portraits/<file>` for each pick, `recipes.json` (a list, one object per pick)
    and `recipes.txt`. `copy_to` (e.g. a folder in Google Drive) receives the same files
    unzipped. Returns the zip's path.
    """
    images_dir = Path(images_dir)
    files = list(dict.fromkeys(files))
    if not files:
        raise PortraitkitError("no portraits are picked; tick at least one before exporting")
    rows = recipes(images_dir, files)
    recipes_json = json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    recipes_txt = _recipes_text(rows)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name in files:
                # PNGs are compressed already; storing them is as small and much faster.
                archive.write(images_dir / name, f"portraits/{name}", compress_type=zipfile.ZIP_STORED)
            archive.writestr("recipes.json", recipes_json, compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr("recipes.txt", recipes_txt, compress_type=zipfile.ZIP_DEFLATED)
    if copy_to is not None:
        folder = Path(copy_to)
        for name in files:
            with atomic_path(folder / name) as tmp:
                shutil.copyfile(images_dir / name, tmp)
        write_text(folder / "recipes.json", recipes_json)
        write_text(folder / "recipes.txt", recipes_txt)
    return Path(zip_path)
