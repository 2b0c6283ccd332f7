"""Atomic file writes: a file either has its complete new content or its old one.

Colab disconnects and Ctrl-C are normal; a half-written JSON or image must never look finished.
Write to a temporary name in the same folder, then `os.replace` (atomic on POSIX and Windows).

`tempfile` creates its files 0600 and its folders 0700, safetensors (0.8) writes its files 0600
whatever the umask, and a rename keeps the mode: without a chmod every output would be private
to its owner, and a teacher's web server or a ComfyUI container running as another user could
not read it. So what was written is given, just before it is renamed into place, the mode a
plain `open()` or `mkdir()` would have given it (0644 / 0755 under umask 022): `shareable`.
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
    try:
        yield tmp
        os.replace(shareable(tmp), path)
    finally:
        tmp.unlink(missing_ok=True)


def shareable(path: str | os.PathLike) -> Path:
    """Give `path`, and everything in it if it is a folder, the mode the umask asks for; return it."""
    path, mask = Path(path), umask()
    for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)
    return path


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


def read_json(path: str | os.PathLike, fix: str, keys: tuple[str, ...] = ()) -> Any:
    """A JSON file another run wrote; a damaged one (cut short, edited by hand) is one sentence
    saying where it breaks and `fix`. With `keys`, the file must be an object holding them."""
    from portraitkit.core.errors import PortraitkitError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise PortraitkitError(f"{path} is damaged (not valid JSON: {error.msg}: line {error.lineno}, column {error.colno}): {fix}") from None
    except UnicodeDecodeError:
        raise PortraitkitError(f"{path} is damaged (not UTF-8 text): {fix}") from None
    if keys and not (isinstance(data, dict) and all(key in data for key in keys)):
        raise PortraitkitError(f"{path} is damaged (it lacks {', '.join(keys)}): {fix}")
    return data


def check_writable(folder: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be written (under /proc, read-only,
    a file in the way): the nearest existing folder on its path gets a probe file that is removed
    at once, so nothing is left behind whether or not the folder can be written."""
    from portraitkit.core.errors import PortraitkitError

    folder = Path(folder).expanduser().absolute()
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    if not existing.is_dir():
        reason = f"{existing} is a file"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".portraitkit-probe-", dir=existing))  # as the stage's sub-folders will be made
            return
        except OSError as error:
            reason = f"{existing} refuses new files: {error.strerror or error}"
    raise PortraitkitError(f"{flag} {folder} cannot be written ({reason}): choose a folder you can write to")


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
