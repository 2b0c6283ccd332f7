"""Where the course runs: Colab or a local Jupyter, the work folder, the GPU, and photo uploads.

A free Colab runtime forgets everything under /content when it disconnects, so in Colab the
course keeps its work (photos, dataset, run folder, portraits) in Google Drive; a notebook
opened on another day finds it there. Locally the work folder is in the home directory, never
inside the repository, so a learner's photos cannot be committed by accident.

Uploads: in Colab, `google.colab.files.upload()` is the one that works; the ipywidgets
FileUpload widget silently delivers empty files of about 1 MB and more there
(jupyter-widgets/ipywidgets #3452). Locally a folder path or the FileUpload widget
(`portraitkit.widgets.photos.UploadPanel`) is used; both end in `save_upload` below.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import atomic_path
from portraitkit.faces.photos import PHOTO_SUFFIXES

DRIVE_MOUNTPOINT = Path("/content/drive")
# Inside the learner's Drive; the course's notebooks all default to it, so they find each other's outputs.
DRIVE_FOLDER = DRIVE_MOUNTPOINT / "MyDrive" / "portraitkit"
LOCAL_FOLDER = Path.home() / "portraitkit-work"
T4_MENU_PATH = "Runtime > Change runtime type > Hardware accelerator: T4 GPU > Save"


def in_colab() -> bool:
    """True inside a Google Colab runtime (its `google.colab` module is imported at start-up)."""
    return "google.colab" in sys.modules


def mount_drive() -> Path:
    """Mount Google Drive in Colab (it asks for permission once per runtime) and return MyDrive."""
    if not in_colab():
        raise PortraitkitError("Google Drive can only be mounted inside Colab; locally give a folder path instead")
    if not (DRIVE_MOUNTPOINT / "MyDrive").is_dir():
        from google.colab import drive

        drive.mount(str(DRIVE_MOUNTPOINT))
    return DRIVE_MOUNTPOINT / "MyDrive"


def work_folder(path: str | None = None) -> Path:
    """The folder the course writes to: `path` if given, else Drive in Colab, else ~/portraitkit-work."""
    if path:
        folder = Path(path).expanduser()
    elif in_colab():
        mount_drive()
        folder = DRIVE_FOLDER
    else:
        folder = LOCAL_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    plain_errors()
    return folder.resolve()


def plain_errors() -> None:
    """In a notebook, show a PortraitkitError as its one sentence, not a traceback: it is a
    mistake the learner can fix (Run All still stops there). Every course notebook calls
    `work_folder` first, which calls this; outside IPython it does nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def one_sentence(shell, kind, error, traceback, tb_offset=None):
        # IPython shows nothing itself for a custom exception: the handler says it (red box).
        print(f"portraitkit: {error}", file=sys.stderr)

    shell.set_custom_exc((PortraitkitError,), one_sentence)


def describe_gpu() -> str:
    """One or two lines on the accelerator this kernel sees, with the way to get a T4 if there is none."""
    import torch

    if not torch.cuda.is_available():
        where = f"In Colab: {T4_MENU_PATH}, then run the notebook again." if in_colab() else \
            "Training and sampling will use the CPU: fine with the tiny base, far too slow for SD1.5 or SDXL."
        return f"No GPU found. {where}"
    properties = torch.cuda.get_device_properties(0)
    total_gb = properties.total_memory / 1024**3
    # Turing (T4, compute capability 7.5) has fp16 tensor cores but no bf16: training runs in fp16.
    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return f"GPU: {properties.name}, {total_gb:.1f} GB, {'bf16 and fp16' if bf16 else 'fp16 only (no bf16)'}."


def safe_name(name: str) -> str:
    """A plain file name from whatever a browser sent: no folders, no odd characters."""
    stem = Path(str(name).replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return cleaned or "photo"


def save_upload(name: str, content: bytes, dest_dir: str | Path) -> Path | None:
    """Write one uploaded file into `dest_dir` and return its path.

    Returns None for a file that is not a photo by its suffix. An empty file raises
    PortraitkitError: that is the FileUpload bug, and a silently empty photo would later be
    reported as unreadable with no hint why. A second upload with the same name but other
    content gets a numbered name instead of replacing the first.
    """
    name = safe_name(name)
    if Path(name).suffix.lower() not in PHOTO_SUFFIXES:
        return None
    content = bytes(content)
    if not content:
        raise PortraitkitError(
            f"{name} arrived empty; in Colab upload with google.colab.files.upload (the upload widget "
            "loses files of about 1 MB and more there), or copy the photos into the folder yourself")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    target, number = dest_dir / name, 1
    while target.exists() and target.read_bytes() != content:
        target = dest_dir / f"{Path(name).stem}_{number}{Path(name).suffix}"
        number += 1
    with atomic_path(target) as tmp:
        tmp.write_bytes(content)
    return target


def upload_photos(dest_dir: str | Path) -> list[Path]:
    """Colab only: open the browser's file chooser and save the chosen photos into `dest_dir`."""
    if not in_colab():
        raise PortraitkitError("google.colab.files.upload works only in Colab; locally use a folder or widgets.photos.UploadPanel")
    from google.colab import files

    uploaded = files.upload() or {}  # {name: bytes} (None if cancelled); it also leaves a copy in the current folder
    saved = [save_upload(name, content, dest_dir) for name, content in uploaded.items()]
    for name in uploaded:  # that copy is in /content, which the next disconnect wipes anyway
        Path(name).unlink(missing_ok=True)
    skipped = [name for name, path in zip(uploaded, saved) if path is None]
    if skipped:
        print(f"Skipped (not a photo by its suffix): {', '.join(skipped)}")
    return [path for path in saved if path is not None]


def list_photos(folder: str | Path) -> list[Path]:
    """The photo files directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


def requirements_to_install() -> str:
    """portraitkit's requirements for `%pip install`, shell-quoted, without `dlib-bin` where a dlib
    already imports: Colab preinstalls a source-built dlib 19.24, and the dlib-bin wheel would
    write its own `dlib` files over that working one. Notebook 00 installs portraitkit with
    `--no-deps` first, then these."""
    import importlib.metadata as metadata
    import shlex

    try:
        import dlib  # noqa: F401
        have_dlib = True
    except Exception:  # not installed, or a broken build: then dlib-bin is what fixes it
        have_dlib = False
    wanted = []
    for requirement in metadata.requires("portraitkit") or []:
        if "extra ==" in requirement:  # the dev extra: tests and notebook tooling
            continue
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()
        if not (have_dlib and name == "dlib-bin"):
            wanted.append(shlex.quote(requirement))
    return " ".join(wanted)
