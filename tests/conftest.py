"""Shared pytest fixtures: paths to the committed sample data and a real public-domain portrait."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network or the user's caches: no hub downloads (they fail fast instead
# of hanging), tiny base models and datasets' caches in a throwaway folder. Set before anything
# imports huggingface_hub, which reads these once.
_CACHE = Path(tempfile.mkdtemp(prefix="portraitkit-tests-"))
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(_CACHE / "hf"),
                  PORTRAITKIT_CACHE=str(_CACHE / "portraitkit"), MPLBACKEND="Agg")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """data/samples: the licence-clean sample photos (see its README.md)."""
    return REPO / "data" / "samples"


@pytest.fixture(scope="session")
def portrait_path() -> Path:
    """matplotlib's public-domain photo of Grace Hopper (US Navy), a real face on every install."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def _find_patch(patch, image, guess, reach: int = 12):
    """Where `patch` (a small square of grey levels) sits in `image` near `guess`: the position
    of the smallest squared difference. Follows image content through a warp, independently of
    any landmark detector."""
    import numpy as np

    half = patch.shape[0] // 2
    best, where = np.inf, guess
    gx, gy = np.round(guess).astype(int)
    for y in range(gy - reach, gy + reach + 1):
        for x in range(gx - reach, gx + reach + 1):
            window = image[y - half : y + half + 1, x - half : x + half + 1]
            cost = ((window - patch) ** 2).sum()
            if cost < best:
                best, where = cost, np.array([x, y], dtype=float)
    return where


def _nose_wings_after(image, warped, landmarks) -> dict:
    """Where the image content at the two nose-wing landmarks (31, 35) sits in `warped`, found by
    its pixels (`_find_patch`), not by a landmark detector's guess."""
    import numpy as np

    before, after = np.asarray(image, float).mean(axis=2), np.asarray(warped, float).mean(axis=2)
    found = {}
    for index in (31, 35):
        x, y = np.round(landmarks[index]).astype(int)
        found[index] = _find_patch(before[y - 4 : y + 5, x - 4 : x + 5], after, landmarks[index])
    return found


@pytest.fixture(scope="session")
def nose_wings_after():
    """`_nose_wings_after`, for tests that check where a warp moved the nose."""
    return _nose_wings_after


@pytest.fixture(scope="session")
def face_dataset(tmp_path_factory, portrait_path):
    """Four 64 px crops of a real portrait, as an imagefolder with captions."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("dataset")
    photo = Image.open(portrait_path).convert("RGB")
    rows = []
    for index, (left, top, size) in enumerate([(100, 40, 300), (120, 60, 280), (80, 30, 340), (110, 50, 300)]):
        name = f"face_{index}.png"
        photo.crop((left, top, left + size, top + size)).resize((64, 64), Image.LANCZOS).save(folder / name)
        rows.append({"file_name": name, "text": "a photo of sks person" + (", close-up" if index % 2 else "")})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture
def umask_022():
    """The usual umask (022) while a test runs, whatever the machine's is: files should come out
    0644 and folders 0755, readable by a web server or a container running as another user."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _private_paths(folder) -> list[str]:
    """Every file or folder under `folder` that other users cannot read (or folder they cannot enter)."""
    import stat

    private = []
    for path in [Path(folder), *Path(folder).rglob("*")]:
        mode = path.stat().st_mode
        needed = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
        if mode & needed != needed:
            private.append(f"{path.relative_to(folder)} ({stat.filemode(mode)})")
    return private


@pytest.fixture(scope="session")
def private_paths():
    """`_private_paths`, for the end-to-end tests that check their outputs can be shared."""
    return _private_paths


def _adapted_run(folder, base: str = "tiny-sd", dora: bool = False, precision: str = "fp32"):
    """A run folder whose LoRA (rank 4, UNet and text encoders) was set, not trained: random up
    weights and DoRA magnitudes, large enough to show. Returns (run folder, the pipeline holding
    that LoRA in memory): what a run's files must reproduce. Seconds instead of a training."""
    import dataclasses

    import torch

    from portraitkit.core.files import write_json
    from portraitkit.models import lora
    from portraitkit.models.bases import load_pipeline, resolve_base
    from portraitkit.train.loop import TrainConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(dataset_dir=str(folder / "no-dataset"), out_dir=str(folder), base=base, rank=4, resolution=64,
                         train_text_encoder=True, dora=dora, save_precision=precision)
    spec = resolve_base(base)
    write_json(folder / "config.json", {"settings": dataclasses.asdict(config),
                                        "base": {"name": spec.name, "source": spec.source, "family": spec.family}})
    torch.manual_seed(0)
    pipe = load_pipeline(base)
    lora.add_to_pipeline(pipe, 4, None, train_text_encoder=True, use_dora=dora)
    with torch.no_grad():
        for model in lora.models(pipe).values():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05)
                elif "magnitude" in name:
                    parameter.mul_(1 + 0.1 * torch.randn_like(parameter))
    lora.save(pipe, folder, 4, None, train_text_encoder=True)
    return folder, pipe


@pytest.fixture(scope="session")
def adapted_run():
    """`_adapted_run`: a run folder with a known LoRA (or DoRA) and the pipeline holding it."""
    return _adapted_run
