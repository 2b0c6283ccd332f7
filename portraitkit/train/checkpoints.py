"""Resumable training checkpoints, written so that a disconnect never leaves a half-checkpoint.

A checkpoint is a folder `checkpoints/step_NNNNNN/` holding:
- `lora.safetensors`: the trainable (LoRA) tensors by parameter name,
- `optimizer.pt`: the optimizer's state dict (tensors, numbers and lists only; read back with
  `torch.load(weights_only=True)`, which refuses arbitrary pickled objects),
- `state.json`: the step, the learning-rate scheduler, on fp16 GPUs the loss scaler, and the
  size and SHA-256 of the two files above.

It is assembled in a hidden temporary folder and renamed into place in one step, so on a local
disk a folder with the final name is complete; leftovers of an interrupted write are ignored and
removed. On Colab's Drive mount (FUSE) a rename is not atomic and uploads finish later, so a
folder can hold a state.json beside a truncated file: a resume checks every file against
state.json and falls back to the newest checkpoint that is whole.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from portraitkit.core.files import shareable, writing

STEP_FOLDER = re.compile(r"^step_(\d{6,})$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first."""
    root = Path(run_dir) / "checkpoints"
    found = []
    for folder in root.glob("step_*") if root.is_dir() else []:
        match = STEP_FOLDER.match(folder.name)
        if match and (folder / "state.json").is_file():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(run_dir: Path, report: bool = False) -> tuple[int, Path] | None:
    """The newest checkpoint whose files are whole (`damage`); with `report`, say which were skipped."""
    for step, folder in reversed(complete_checkpoints(run_dir)):
        problem = damage(folder)
        if problem is None:
            return step, folder
        if report:
            print(f"portraitkit: checkpoints/{folder.name} is damaged ({problem}): skipped, as a resume cannot trust it.")
    return None


def damage(folder: Path) -> str | None:
    """What is wrong with a checkpoint's files, or None when each has the size and hash state.json
    recorded (checkpoints written before the record was kept count as whole)."""
    try:
        recorded = json.loads((folder / "state.json").read_text()).get("files", {})
    except (OSError, ValueError):
        return "state.json is unreadable"
    for name, expected in recorded.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size if path.is_file() else 'no'} bytes, not {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its hash"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(run_dir: Path, step: int, trainable: dict, optimizer, state: dict, keep: int = 3) -> Path:
    """Write a checkpoint atomically and keep only the newest `keep` (Drive space is finite); a
    full disk is one sentence (`core.files.writing`), the checkpoints before intact."""
    root = Path(run_dir) / "checkpoints"
    tensors = sum(t.numel() * t.element_size() for t in trainable.values())
    with writing(root, f"the checkpoint of step {step}", needs=3 * tensors):  # the LoRA, and AdamW's two moments at most
        root.mkdir(parents=True, exist_ok=True)
        final = _write_checkpoint(root, run_dir, step, trainable, optimizer, state)
    for _, old in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(root: Path, run_dir: Path, step: int, trainable: dict, optimizer, state: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
    try:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in trainable.items()}, tmp / "lora.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                 for name in ("lora.safetensors", "optimizer.pt")}
        (tmp / "state.json").write_text(json.dumps({"step": step, **state, "files": files}, indent=2))  # last: it vouches for the others
        final = checkpoint_dir(run_dir, step)
        if final.exists():
            shutil.rmtree(final)
        shareable(tmp).rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model_parameters: dict, optimizer) -> dict:
    """Restore LoRA tensors in place and the optimizer; return the saved state (step, scheduler...)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(folder / "lora.safetensors")
    missing = set(model_parameters) - set(tensors)
    if missing:
        raise KeyError(f"checkpoint {folder} lacks {len(missing)} LoRA tensors, e.g. {sorted(missing)[0]}")
    with torch.no_grad():
        for name, parameter in model_parameters.items():
            parameter.copy_(tensors[name])
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
    return json.loads((folder / "state.json").read_text())


def remove_partial_writes(run_dir: Path) -> None:
    for leftover in (Path(run_dir) / "checkpoints").glob(".writing-*"):
        shutil.rmtree(leftover, ignore_errors=True)
