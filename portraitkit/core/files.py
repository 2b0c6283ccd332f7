"""Atomic file writes: a file either has its complete new content or its old one.

Colab disconnects and Ctrl-C are normal; a half-written JSON or image must never look finished.
Write to a temporary name in the same folder, then `os.replace` (atomic on POSIX and Windows).

`tempfile` creates its files 0600 and its folders 0700, and a rename keeps that mode: without a
chmod every output would be private to its owner, whatever the umask says, and a teacher's web
server or a ComfyUI container running as another user could not read it. So the temporary file
or folder is given the mode `open()` or `mkdir()` would have given it (0644 / 0755 under umask 022).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    `suffix` defaults to the target's own, so writers that choose a format by extension
    (PIL, matplotlib, safetensors) still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    tmp.chmod(0o666 & ~umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A new hidden folder in `parent` to assemble something in before renaming it into place,
    with the mode a plain `mkdir` gives (mkdtemp's 0700 would survive the rename)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder.chmod(0o777 & ~umask())
    return folder


def umask() -> int:
    """The process's umask: from /proc on Linux; elsewhere reading it means setting it, so it is
    set straight back (to a common value meanwhile, in case another thread creates a file then)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping a last line cut short by an interrupted append."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def save_image(path: str | os.PathLike, image, **save_kwargs) -> Path:
    """Save a PIL image atomically; format from the extension, PNG text chunks via `pnginfo`."""
    with atomic_path(path) as tmp:
        image.save(tmp, **save_kwargs)
    return Path(path)
