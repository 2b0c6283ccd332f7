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
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, needs: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step.

    `suffix` defaults to the target's own, so writers that choose a format by extension
    (PIL, matplotlib, safetensors) still do the right thing. A full disk is one sentence
    (`writing`; `needs`: the file's size in bytes, where the caller knows it).
    """
    path = Path(path)
    with writing(path.parent, path.name, needs, lambda: tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            os.replace(shareable(tmp), path)
        finally:
            tmp.unlink(missing_ok=True)


# What a full disk or an exhausted quota looks like from each writer: an OSError's errno (Python,
# PIL, matplotlib), the OS's words in a library's own error (safetensors: "No space left on
# device (os error 28)"), or neither (torch.save: "PytorchStreamWriter failed writing file"),
# where the disk itself is then all but full.
FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122")
NEARLY_FULL = 16 << 20  # bytes free after a failed write that mean the disk filled up


def free_bytes(folder: str | os.PathLike) -> int | None:
    existing = next((p for p in (Path(folder), *Path(folder).parents) if p.exists()), None)
    try:
        return shutil.disk_usage(existing).free if existing is not None else None
    except OSError:
        return None


def is_disk_full(error: BaseException, folder: str | os.PathLike) -> bool:
    if isinstance(error, OSError) and error.errno in FULL:
        return True
    if any(words in str(error) for words in FULL_WORDS):
        return True
    free = free_bytes(folder)
    return isinstance(error, (OSError, RuntimeError)) and free is not None and free < NEARLY_FULL


@contextlib.contextmanager
def writing(folder: str | os.PathLike, what: str, needs: int | None = None, written=None) -> Iterator[None]:
    """Turn a full disk met inside the block into `DiskFull`: one sentence naming the folder, the
    free space and the space needed (`needs` bytes, else at least what `written()` had reached)."""
    from portraitkit.core.errors import DiskFull, PortraitkitError

    try:
        yield
    except PortraitkitError:
        raise
    except Exception as error:
        if not is_disk_full(error, folder):
            raise
        so_far = None
        with contextlib.suppress(Exception):
            so_far = Path(written()).stat().st_size if written is not None else None
        needed = f"{_size(needs)}" if needs else f"more than the {_size(so_far)} it had written" if so_far else "more"
        free = free_bytes(folder)
        raise DiskFull(f"The disk holding {Path(folder)} is full ({_size(free) if free is not None else 'no space'} free) "
                       f"while writing {what}, which needs {needed}: free some space there, or choose another folder, "
                       "and run the same command again; nothing half-written was left, and everything saved before is intact.") from None


def _size(count: int | None) -> str:
    if count is None:
        return "an unknown amount"
    return f"{count / (1 << 20):.1f} MB" if count >= 1 << 20 else f"{count / 1024:.0f} KB"


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


def inside(folder: str | os.PathLike, name: str) -> Path | None:
    """`folder / name` when it lies inside `folder` once links and `..` are resolved, else None:
    a name a learner typed (or a link in a shared folder) must not reach any file the account can read."""
    root = Path(folder).resolve()
    if not name or Path(name).is_absolute():
        return None
    path = (root / name).resolve()
    return root / name if path == root or root in path.parents else None


def dataset_rows(folder: str | os.PathLike) -> list[dict]:
    """A dataset's metadata.jsonl rows, each image and mask it names checked to lie inside the
    dataset folder (learners edit captions there by hand; a class server reads many)."""
    from portraitkit.core.errors import PortraitkitError

    folder = Path(folder)
    rows = read_jsonl(folder / "metadata.jsonl")
    for number, row in enumerate(rows, 1):
        for key in ("file_name", "mask_file_name"):
            name = row.get(key)
            if name is not None and inside(folder, str(name)) is None:
                raise PortraitkitError(f"{folder / 'metadata.jsonl'} line {number} names {key} {str(name)!r}, outside the "
                                       "dataset folder: a dataset's images lie inside it, so correct that line or prepare the photos again")
    return rows


def save_image(path: str | os.PathLike, image, **save_kwargs) -> Path:
    """Save a PIL image atomically; format from the extension, PNG text chunks via `pnginfo`."""
    with atomic_path(path) as tmp:
        image.save(tmp, **save_kwargs)
    return Path(path)
