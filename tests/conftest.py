"""Shared pytest fixtures: paths to the committed sample data and a real public-domain portrait."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network or the user's caches: no hub downloads (they fail fast instead
# of hanging), tiny base models and datasets' caches in a throwaway folder. Set before anything
# imports huggingface_hub, which reads these once.
_CACHE = Path(tempfile.mkdtemp(prefix="portraitkit-tests-"))
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # ~20 MB of tiny bases a session: not left in /tmp
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(_CACHE / "hf"),
                  PORTRAITKIT_CACHE=str(_CACHE / "portraitkit"), MPLBACKEND="Agg")

# Under pytest-xdist each worker gets its share of the cores for torch's (and its subprocesses')
# thread pools: the tiny models gain nothing from more, and workers competing for every core
# run slower together than one after the other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parents[1]


# The files that take longest (fresh interpreters, Ray, notebook kernels, real-size traces), longest
# first: handed out first, the short files then fill in around them on the other worker.
LONG_FILES_FIRST = ["test_notebooks.py", "test_classroom.py", "test_demo.py", "test_multiprocess.py", "test_benchmarks.py",
                    "test_plan.py", "test_plan_table.py", "test_diagnose.py", "test_prep.py", "test_train.py", "test_gpu_check.py"]


def pytest_collection_modifyitems(items):
    order = {name: index for index, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: within a file, and the rest, as collected


_MODULES_SEEN = 0


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test that imported new libraries (torch, diffusers, transformers: millions of objects
    that live as long as the process), move what is alive into the collector's permanent generation
    (`gc.freeze`, after a collection, so no garbage goes with it). Python's full collections then
    stop re-walking those libraries every few seconds: they took a seventh of the suite's time."""
    import gc
    import sys

    global _MODULES_SEEN
    if len(sys.modules) > _MODULES_SEEN:
        _MODULES_SEEN = len(sys.modules)
        gc.collect()
        gc.freeze()


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """data/samples: the licence-clean sample photos (see its README.md)."""
    return REPO / "data" / "samples"


@pytest.fixture(scope="session")
def faceless_photo(tmp_path_factory, samples_dir) -> Path:
    """data/samples/coffee.jpg (no face) at 240 x 160: where a test needs any photo without a face.
    With no face for the frontal detector, the CNN detector searches it too, at a cost that grows with
    the pixels: 1.1 s of CPU at the sample's 600 x 400, a sixth of that here."""
    from PIL import Image

    path = tmp_path_factory.mktemp("faceless") / "coffee.jpg"
    with Image.open(samples_dir / "coffee.jpg") as photo:
        photo.convert("RGB").resize((240, 160), Image.LANCZOS).save(path, quality=92)
    return path


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


@functools.lru_cache(maxsize=2)
def _base_pipeline(base: str):
    """A base pipeline, loaded once for the hand computations (which never change it)."""
    from portraitkit.models.bases import load_pipeline

    return load_pipeline(base)


def _first_step_loss(run_dir, caption_dropped: bool | None = None, **changes) -> float:
    """The loss `train` logs for step 1 of the run in `run_dir` (its config.json), computed by hand (as tests/test_loss.py writes
    the objective out): the same draws (a generator seeded by (seed, micro-batch 0)), the base
    UNet (a new LoRA's B is 0, so at step 1 it adds nothing), x_t = sqrt(a) x0 + sqrt(1 - a) eps,
    the noise as target, the error counted on the face mask only (background weight 0), min-SNR
    weighted, and with prior preservation the class image's loss added. One image per micro-batch.

    `caption_dropped` (None: as the run draws it) and `changes` to the settings give the loss of
    another step 1, to show what a setting changes."""
    from types import SimpleNamespace

    import torch
    from diffusers import DDPMScheduler
    from PIL import Image

    from portraitkit.models.conditioning import unet_conditioning
    from portraitkit.train.cache import encode_text, image_to_tensor, latent_masks, load_examples
    from portraitkit.train.draws import batch_indices
    from portraitkit.train.objective import bare_caption, dropped_captions

    config = SimpleNamespace(**{**json.loads((Path(run_dir) / "config.json").read_text())["settings"], **changes})
    assert config.batch_size == 1 and config.grad_accum == 1 and not config.noise_offset and not config.train_text_encoder
    assert config.background_weight == 0 and not config.vae
    pipe = _base_pipeline(config.base)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    assert scheduler.config.prediction_type == "epsilon"
    size = config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor

    def latents_of(image):
        with torch.no_grad():
            return pipe.vae.encode(image_to_tensor(image, size)[None]).latent_dist.mean * pipe.vae.config.scaling_factor

    examples = load_examples(config.dataset_dir)
    [pick] = batch_indices(config.seed, 0, 1, len(examples))
    dropped = dropped_captions(config.seed, 0, 1, config.caption_dropout)[0] if caption_dropped is None else caption_dropped
    captions = [bare_caption(examples[pick]["text"]) if dropped else examples[pick]["text"]]
    images = [examples[pick]["image"]]
    if config.class_dir:
        classes = sorted(Path(config.class_dir).glob("*.png"))[: config.num_class_images]
        [class_pick] = batch_indices(config.seed + 1, 0, 1, len(classes))
        images.append(Image.open(classes[class_pick]).convert("RGB"))
        captions.append(config.class_prompt)
    x0 = torch.cat([latents_of(image) for image in images])
    generator = torch.Generator().manual_seed(config.seed * 1_000_003)
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), generator=generator)
    with torch.no_grad():
        text = encode_text(pipe, captions, "cpu")
        # SDXL's size ids, written out (SD1.5 has none): square, uncropped images at the training size
        text["time_ids"] = torch.tensor([[size, size, 0, 0, size, size]] * len(x0), dtype=torch.float32)
        a = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        predicted = pipe.unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, **unet_conditioning(text, size, torch.float32)).sample
    weights = torch.ones_like(x0[:, :1])
    if config.masked_loss:  # the class image keeps its whole picture
        weights[0] = latent_masks([examples[pick]], size, x0.shape[-1])[0]
    per_sample = ((predicted - eps) ** 2 * weights).sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * x0.shape[1])
    if config.snr_gamma is not None:
        snr = (a / (1 - a)).flatten()
        per_sample = per_sample * torch.clamp(snr, max=config.snr_gamma) / snr
    return float(per_sample[0] + (config.prior_loss_weight * per_sample[1] if config.class_dir else 0))


@pytest.fixture(scope="session")
def first_step_loss():
    """`_first_step_loss`: the loss of a run's first step, by hand, for tests of what train logs."""
    return _first_step_loss


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
    from portraitkit.train.config import TrainConfig

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
