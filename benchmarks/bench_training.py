"""Peak GPU memory, peak RAM and time per step of LoRA training on real-size SD1.5 and SDXL:
portraitkit's T4 recipe beside a plain diffusers + peft loop, and one image of inference per base.

On a machine with a CUDA GPU, one command measures everything, writes
benchmarks/results/<gpu>-<date>.json and prints a table with the planner's estimates beside:

    python benchmarks/bench_training.py

On a CPU, the same script runs on the tiny bases in well under a minute, to prove that it works
(GPU fields are null; nothing is written unless --out is given; tests/test_benchmarks.py runs it):

    python benchmarks/bench_training.py --tiny

Memory and time depend on the architecture and the settings, not on the weights: the real-size
bases are built from the published configurations in portraitkit.plan.estimate with random weights, saved
once as fp16 safetensors (about 2 GB for SD1.5, 7 GB for SDXL, under --cache), and loaded the way
training loads a downloaded base. Each configuration runs in a fresh Python process, so no peak
leaks from one into the next:

- portraitkit: `portraitkit.train.loop.train` itself (fp16 frozen weights, fp32 LoRA, 8-bit AdamW,
  gradient checkpointing, SDPA, latents and text embeddings cached once), on a small generated
  dataset; the time of each step comes from its train_log.jsonl, the GPU peaks from `on_step`
  (loading and caching up to the first step, the training steps, then the final validation);
- portraitkit_no_checkpointing: the same without gradient checkpointing, which `train` chooses by
  default where the planner finds that the run fits with room to spare (SD1.5 on a T4);
- plain: the loop most tutorials write, without those savings: fp32 weights under fp16 autocast,
  the VAE and text encoder(s) run in every step, 32-bit AdamW, no gradient checkpointing;
- inference: one image at 25 steps with the fp16 pipeline, after a 2-step warm-up;
- trace: one real training step of the UNet on the CPU (fp32, LoRA, checkpointing) counted by the
  planner's live-tensor tracer, beside the planner's estimate of the same step (its meta trace):
  the check that every memory estimate rests on; and how much more the process itself grew, which the CPU estimates add;
- load: RAM only, the base loaded in fp16 with its LoRA added, as `train` holds it before its first
  move to the GPU, then every weight read once, as that move reads it. That part of the T4
  recipe's RAM is the same on any machine, so a CPU measures it on the real-size bases too
  (`--bases sd15,sdxl --recipes load`).

Peak GPU memory: torch.cuda.max_memory_allocated and max_memory_reserved, and the device-level
figure (reserved plus what CUDA itself holds: total - free - reserved, read after the steps).
Peak RAM: ru_maxrss of the process (includes memory-mapped weight files) and the sampled peak of
its anonymous memory (RssAnon, what the kernel cannot drop). Seconds per step: the median after
the warm-up steps, with the GPU synchronised.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MARK = "BENCH_RESULT "
CAPTION = "a photo of sks person"
GIB = 2**30
PACKAGES = ["portraitkit", "torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors"]
BUILD_VERSION = 1  # bump when the random-base recipe changes, so stale folders are rebuilt
PORTRAITKIT, NO_CHECKPOINTING = "portraitkit", "portraitkit_no_checkpointing"  # the recipes of train itself


# --- the parent: prepare, run each configuration in its own process, report ----------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU check on the tiny bases (tiny-sd, tiny-sdxl)")
    parser.add_argument("--bases", help="comma-separated: sd15,sdxl (default), or tiny-sd,tiny-sdxl with --tiny; "
                        "sd15-fp32,sdxl-fp32: the same saved in fp32 only, like a base without fp16 files")
    parser.add_argument("--recipes", default=f"{PORTRAITKIT},{NO_CHECKPOINTING},plain,inference,load",
                        help="which configurations to measure")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--resolution", type=int, help="training size in pixels (default: each base's own)")
    parser.add_argument("--steps", type=int, help="measured steps per training configuration (default 10; 3 with --tiny)")
    parser.add_argument("--warmup", type=int, help="steps run before measuring (default 3; 1 with --tiny)")
    parser.add_argument("--out", help=f"results folder (default {RESULTS.relative_to(REPO)}; none with --tiny), "
                        "or a file name ending in .json")
    parser.add_argument("--cache", help="where the random-weight real-size bases are kept (default: portraitkit's cache)")
    parser.add_argument("--ram-cap-gb", type=float, help="run each configuration in a Linux memory cgroup with this "
                        "much RAM, as on a machine that has no more (free Colab: 11.5); page cache is reclaimed "
                        "under the cap, and a run that needs more is killed and recorded so; needs root")
    parser.add_argument("--fresh", action="store_true", help="with --tiny: start each configuration as a new interpreter, "
                        "as GPU runs always do, instead of forking this one after its imports")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    bases = (args.bases or ("tiny-sd,tiny-sdxl" if args.tiny else "sd15,sdxl")).split(",")
    recipes = args.recipes.split(",")
    steps, warmup = args.steps or (3 if args.tiny else 10), args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    # On a GPU every configuration gets a new interpreter: CUDA cannot be used in a forked process.
    # On a CPU, forking after the heavy imports gives each configuration its own process in a second.
    cap = RamCap(args.ram_cap_gb) if args.ram_cap_gb else None
    launch = run_forked if args.tiny and not args.fresh and not cap else functools.partial(run_fresh, cap=cap)
    work = Path(tempfile.mkdtemp(prefix="portraitkit-bench-"))
    results, measured = [], []
    try:
        for base in bases:
            folder = prepare_base(base, args.cache)
            resolution = args.resolution or resolution_of(folder)
            dataset = make_dataset(work / f"data-{resolution}", resolution)
            specs = [{"task": recipe, "base": base, "folder": str(folder), "dataset": str(dataset), "rank": args.rank,
                      "resolution": resolution, "steps": steps, "warmup": warmup, "work": str(work / f"{base}-{recipe}")}
                     for recipe in recipes]
            if launch is run_forked:
                preload(specs)
            for spec in specs:  # one at a time: peaks must not overlap
                results.append(launch(spec))
                print(f"{base} {spec['task']}: {results[-1]['status']}", flush=True)
                measured.append(spec)
        if launch is run_forked:  # the estimates once all forks are done (see forked_child), sharing one planner
            for spec, result in zip(measured, results):
                result["estimate"], result["difference_pct"] = estimate(spec, result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cap:
            cap.close()

    print(table(results))
    out = args.out or (None if args.tiny else str(RESULTS))
    if out:
        gpu = results[0]["gpu"] or "cpu"
        path = Path(out) if out.endswith(".json") else Path(out) / f"{slug(gpu)}-{results[0]['date']}.json"
        from portraitkit.core.files import write_json

        write_json(path, results)
        print(f"\nWrote {path}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


CHILD_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg", "PORTRAITKIT_SKIP_PLAN": "1",
             "TOKENIZERS_PARALLELISM": "false"}


def run_fresh(spec: dict, cap: RamCap | None = None, timeout: float | None = None) -> dict:
    """One configuration in a new interpreter (inside the RAM cap, if any); its last BENCH_RESULT
    line is the result. (A cap just above what the child cannot do without makes it thrash,
    re-reading its libraries, rather than die: `timeout` bounds that.)"""
    kills = cap.oom_kills() if cap else 0
    if cap:
        cap.drop_page_cache()
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env={**os.environ, **CHILD_ENV},
                          capture_output=True, text=True, preexec_fn=cap.enter if cap else None, timeout=timeout)
    lines = [line[len(MARK):] for line in done.stdout.splitlines() if line.startswith(MARK)]
    capped = {"ram_cap_gb": cap.limit_gb} if cap else {}
    if lines:
        return {**json.loads(lines[-1]), **capped}
    if cap and cap.oom_kills() > kills:
        return {**identity(spec, None), **capped, "status": f"out of RAM: killed under the {cap.limit_gb} GiB cap"}
    reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {**identity(spec, None), **capped, "status": f"crashed (exit {done.returncode}): {reason[:300]}"}


class RamCap:
    """A Linux memory cgroup (v1 or v2) that holds each child to `limit_gb` of RAM, as a machine with
    no more would: the kernel reclaims page cache and memory-mapped file pages under the limit and
    kills the process only when what it cannot reclaim exceeds it. Swap is off, as on Colab."""

    def __init__(self, limit_gb: float):
        self.limit_gb = limit_gb
        if Path("/sys/fs/cgroup/cgroup.controllers").exists():  # cgroup v2
            root, settings, self.events = Path("/sys/fs/cgroup"), {"memory.max": int(limit_gb * GIB), "memory.swap.max": 0}, "memory.events"
        else:
            root, settings, self.events = Path("/sys/fs/cgroup/memory"), {"memory.limit_in_bytes": int(limit_gb * GIB),
                                                                          "memory.swappiness": 0}, "memory.oom_control"
        self.path = root / f"portraitkit-bench-{os.getpid()}"
        try:
            self.path.mkdir()
            for name, value in settings.items():
                (self.path / name).write_text(str(value))
        except OSError as error:
            raise SystemExit(f"--ram-cap-gb needs a memory cgroup it may create and limit (root on Linux): {error}")

    @staticmethod
    def drop_page_cache() -> None:
        """Forget cached file pages, so that the child's reads of the weight files are charged to its
        cgroup, as on a machine that has just downloaded them (pages cached earlier stay charged to
        whoever read them first)."""
        os.sync()
        try:
            Path("/proc/sys/vm/drop_caches").write_text("1")
        except OSError as error:  # the cap still holds; only pages cached before it count elsewhere
            print(f"Could not drop the page cache ({error}): weight files read earlier are not charged to the cap.")

    def enter(self) -> None:  # runs in the child between fork and exec
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        lines = (self.path / self.events).read_text().splitlines()
        return next((int(line.split()[1]) for line in lines if line.startswith("oom_kill ")), 0)

    def close(self) -> None:
        self.path.rmdir()


def run_forked(spec: dict) -> dict:
    """One configuration in a forked copy of this process (CPU only), its output silenced."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=forked_child, args=(spec, writer))
    process.start()
    writer.close()
    try:
        result = reader.recv()
    except EOFError:
        result = {**identity(spec, None), "status": "crashed: the forked process ended without a result"}
    process.join()
    return result


def forked_child(spec: dict, writer) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ.update(CHILD_ENV)
    # The parent estimates after the last fork: its planner measures this CPU with torch's thread
    # pool, and a process forked after that would hang in its first parallel operation.
    writer.send(measure(spec, with_estimate=False))


def preload(specs: list[dict]) -> None:
    """What every configuration would otherwise do anew, done once before forking: the imports and
    dlib's face models (validation scores its renders). Nothing here may run torch's CPU thread pool
    or dlib's detectors: a copy forked after either hangs in their threads."""
    import datasets  # noqa: F401
    import diffusers  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import peft  # noqa: F401
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: F401
    import portraitkit.plan.estimate  # noqa: F401
    import portraitkit.train.loop  # noqa: F401
    import portraitkit.train.validate  # noqa: F401
    from portraitkit.faces.detect import load_models

    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # train reports a missing bitsandbytes itself
        pass
    load_models()


def prepare_base(base: str, cache: str | None) -> Path:
    """A diffusers folder for `base`: the tiny presets as portraitkit builds them; for sd15/sdxl a
    real-size model with random weights, built once in a separate process (on the GPU when there is one)."""
    from portraitkit.models.bases import TINY_PRESETS, cache_dir, tiny_base_folder

    if base in TINY_PRESETS:
        return tiny_base_folder(base)
    folder = Path(cache or cache_dir() / "bench-bases") / f"{base}-random-v{BUILD_VERSION}"
    if not (folder / "model_index.json").is_file():
        print(f"Building a random-weight {base} in {folder} (once)...", flush=True)
        spec = {"task": "build", "base": base, "folder": str(folder)}
        subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], check=True)
    return folder


def resolution_of(folder: Path) -> int:
    if (folder / "transformer").is_dir():  # FLUX.2: no UNet; its VAE's sample_size is the pipeline's default size
        return json.loads((folder / "vae" / "config.json").read_text())["sample_size"]
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def make_dataset(folder: Path, resolution: int, count: int = 4) -> Path:
    """A few smooth random colour images with captions, as `portraitkit prep` lays them out."""
    import numpy as np
    from PIL import Image

    from portraitkit.core.files import save_image, write_jsonl

    rng = np.random.default_rng(0)
    rows = []
    for index in range(count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((resolution, resolution), Image.BICUBIC)
        save_image(folder / f"photo_{index}.png", image)
        rows.append({"file_name": f"photo_{index}.png", "text": CAPTION})
    write_jsonl(folder / "metadata.jsonl", rows)
    return folder


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- the report ---------------------------------------------------------------------------------


def table(results: list[dict]) -> str:
    def cell(row, key, digits=2):
        measured, estimate = row.get(key), (row.get("estimate") or {}).get(key)
        text = "-" if measured is None else f"{measured:.{digits}f}"
        if estimate is not None:
            text += f" (est {estimate:.{digits}f})"
        return text

    header = ["base", "recipe", "px", "GPU alloc GiB", "GPU total GiB", "RAM GiB", "s/step", "status"]
    rows = [[r["base"], r["recipe"], str(r["resolution"]), cell(r, "peak_gpu_allocated_gb"), cell(r, "peak_gpu_mem_gb"),
             cell(r, "peak_host_ram_gb", 1), cell(r, "seconds_per_step", 3), r["status"][:40]] for r in results]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in [header, *rows]]
    gpu = results[0]["gpu"] if results else None
    lines.insert(0, f"Measured on {gpu or 'a CPU (no GPU figures)'}; (est ...) = portraitkit.plan.estimate's estimate")
    for base in dict.fromkeys(r["base"] for r in results):
        plain = next((r for r in results if r["base"] == base and r["recipe"] == "plain" and r["status"] == "ok"), None)
        for recipe in (PORTRAITKIT, NO_CHECKPOINTING):
            mine = next((r for r in results if r["base"] == base and r["recipe"] == recipe and r["status"] == "ok"), None)
            if mine and plain:
                memory = (f", {plain['peak_gpu_allocated_gb'] / mine['peak_gpu_allocated_gb']:.2f}x less GPU memory"
                          if mine["peak_gpu_allocated_gb"] else "")
                name = "portraitkit's step" + ("" if recipe == PORTRAITKIT else " without checkpointing")
                lines.append(f"{base}: {name} is {plain['seconds_per_step'] / mine['seconds_per_step']:.2f}x as fast "
                             f"as the plain loop's{memory}")
    return "\n".join(lines)


# --- the children -------------------------------------------------------------------------------


def child(spec: dict) -> int:
    if spec["task"] == "build":
        build_random_base(spec["base"], Path(spec["folder"]))
        return 0
    print(MARK + json.dumps(measure(spec)), flush=True)
    return 0


def measure(spec: dict, with_estimate: bool = True) -> dict:
    tasks = {PORTRAITKIT: measure_portraitkit, NO_CHECKPOINTING: measure_portraitkit, "plain": measure_plain,
             "inference": measure_inference, "load": measure_load, "trace": measure_trace}
    if spec["task"] not in tasks:
        raise SystemExit(f"unknown recipe {spec['task']}: use {', '.join(tasks)}")
    watcher = RamWatcher()
    result = identity(spec, gpu_name())
    try:
        result.update(tasks[spec["task"]](spec))
        result["status"] = "ok"
    except Exception as error:
        if "out of memory" in str(error).lower():
            result["status"] = "out of memory"
        else:
            result["status"] = f"error: {type(error).__name__}: {str(error)[:300]}"
    result.update(watcher.stop())
    if with_estimate:
        result["estimate"], result["difference_pct"] = estimate(spec, result)
    return result


def identity(spec: dict, gpu: str | None) -> dict:
    return {"gpu": gpu, "base": spec["base"], "resolution": spec["resolution"], "rank": spec["rank"], "batch_size": 1,
            "recipe": spec["task"], "tiny": spec["base"].startswith("tiny"), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(), "versions": versions(),
            "peak_gpu_allocated_gb": None, "peak_gpu_reserved_gb": None, "peak_gpu_mem_gb": None,
            "peak_host_ram_gb": None, "seconds_per_step": None}


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine() -> dict:
    """The CPU and RAM the figures come from (a CPU run's figures describe this machine only)."""
    import psutil

    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    return {"cpu": names[0] if names else None, "cpu_count": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / GIB, 1)}


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    import torch

    found["cuda"] = torch.version.cuda
    found["python"] = sys.version.split()[0]
    return found


class RamWatcher:
    """Peak RAM of this process: the kernel's high-water mark, and sampled anonymous memory."""

    def __init__(self, every: float = 0.02):
        self.peak_anon = 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, args=(every,), daemon=True)
        self.thread.start()

    def sample(self, every: float) -> None:
        while self.running:
            self.peak_anon = max(self.peak_anon, self.anon_now())
            time.sleep(every)

    @staticmethod
    def anon_now() -> int:
        """Bytes of anonymous memory this process holds now (0 where /proc is missing)."""
        status = Path("/proc/self/status")
        lines = status.read_text().splitlines() if status.exists() else []
        return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("RssAnon:")), 0)

    def stop(self) -> dict:
        self.running = False
        self.thread.join()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return {"peak_host_ram_gb": round(maxrss / GIB, 3), "peak_host_anon_gb": round(self.peak_anon / GIB, 3) or None}


class GpuPeaks:
    """torch.cuda's peak counters per phase; all None on a CPU."""

    def __init__(self):
        import torch

        self.torch = torch
        self.cuda = torch.cuda.is_available()
        self.phases: dict[str, dict] = {}
        self.outside = None  # what CUDA holds outside PyTorch's allocator

    def close_phase(self, name: str) -> None:
        if not self.cuda:
            return
        cuda = self.torch.cuda
        cuda.synchronize()
        self.phases[name] = {"allocated_gb": round(cuda.max_memory_allocated() / GIB, 3),
                             "reserved_gb": round(cuda.max_memory_reserved() / GIB, 3)}
        if self.outside is None or name == "train_steps":
            free, total = cuda.mem_get_info()
            self.outside = (total - free - cuda.memory_reserved()) / GIB
        cuda.reset_peak_memory_stats()

    def summary(self) -> dict:
        if not self.cuda:
            return {}
        allocated = max(p["allocated_gb"] for p in self.phases.values())
        reserved = max(p["reserved_gb"] for p in self.phases.values())
        return {"peak_gpu_allocated_gb": allocated, "peak_gpu_reserved_gb": reserved,
                "peak_gpu_mem_gb": round(reserved + self.outside, 3), "cuda_outside_allocator_gb": round(self.outside, 3),
                "phases": self.phases}


def measure_portraitkit(spec: dict) -> dict:
    """portraitkit's own training code path, on the T4 recipe (fp16 on a GPU), with or without
    gradient checkpointing as the recipe's name says."""
    import torch

    from portraitkit.core.files import read_jsonl
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    total = spec["warmup"] + spec["steps"]
    peaks = GpuPeaks()

    def on_step(row):
        if row["step"] == 1:
            peaks.close_phase("load_cache_first_step")
        elif row["step"] == total:
            peaks.close_phase("train_steps")

    config = TrainConfig(
        dataset_dir=spec["dataset"], out_dir=spec["work"], base=spec["folder"], steps=total, rank=spec["rank"],
        resolution=spec["resolution"], mixed_precision="fp16" if torch.cuda.is_available() else "no",
        optimizer="adamw8bit", gradient_checkpointing=spec["task"] == PORTRAITKIT, checkpoint_every=0, validate_every=total,  # once, at the end
        validation_styles=("studio",), validation_seeds=(0,), validation_steps=2)
    train(config, on_step=on_step)
    peaks.close_phase("save_and_validate")
    rows = read_jsonl(Path(spec["work"]) / "train_log.jsonl")
    seconds = [row["seconds"] for row in rows if row["step"] > spec["warmup"]]
    return {"seconds_per_step": round(statistics.median(seconds), 4), "measured_steps": len(seconds),
            "warmup_steps": spec["warmup"], **peaks.summary()}


def measure_plain(spec: dict) -> dict:
    """A plain diffusers + peft loop: fp32 weights, fp16 autocast, VAE and text encoders in every
    step, 32-bit AdamW, no gradient checkpointing (SDPA is diffusers' default attention here too)."""
    import torch

    peaks = GpuPeaks()
    seconds = plain_loop(spec["folder"], [Path(spec["dataset"]) / "photo_0.png"], spec["resolution"], spec["rank"],
                         spec["warmup"] + spec["steps"], half=torch.float16 if torch.cuda.is_available() else None,
                         after_first_step=lambda: peaks.close_phase("load_first_step"))
    peaks.close_phase("train_steps")
    measured = seconds[spec["warmup"]:]
    return {"seconds_per_step": round(statistics.median(measured), 4), "measured_steps": len(measured),
            "warmup_steps": spec["warmup"], **peaks.summary()}


def plain_loop(base: str, photos: list[Path], resolution: int, rank: int, steps: int, batch_size: int = 1,
               half=None, checkpointing: bool = False, after_first_step=None) -> list[float]:
    """The loop most tutorials write: the base in fp32 (autocast to `half` if given), a LoRA on the
    UNet, then the VAE, the text encoder(s), the UNet and 32-bit AdamW in every step. Returns the
    seconds of each step (GPU synchronised)."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from PIL import Image

    from portraitkit.models.bases import load_pipeline
    from portraitkit.train.cache import encode_text, image_to_tensor
    from portraitkit.models.conditioning import unet_conditioning
    from portraitkit.models.lora import UNET_TARGETS

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    pipe = load_pipeline(base, dtype=torch.float32, device=device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        pipe.unet.train()
    trainable = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and half is torch.float16)
    autocast = torch.autocast(device.type, dtype=half or torch.float32, enabled=half is not None)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pixels = [image_to_tensor(Image.open(p).convert("RGB"), resolution) for p in photos]
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for step in range(steps):
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        batch = torch.stack([pixels[(step * batch_size + i) % len(pixels)] for i in range(batch_size)]).to(device)
        with torch.no_grad(), autocast:  # the frozen encoders run in every step
            cond = encode_text(pipe, [CAPTION] * batch_size, device)
            latents = pipe.vae.encode(batch).latent_dist.sample() * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator).to(device)
        noisy = noise_scheduler.add_noise(latents.float(), noise, timesteps)
        with autocast:
            prediction = pipe.unet(noisy, timesteps, **unet_conditioning(cond, resolution, torch.float32)).sample
            loss = F.mse_loss(prediction.float(), noise)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - began)
        if step == 0 and after_first_step is not None:
            after_first_step()
    return seconds


def measure_inference(spec: dict, steps: int = 25) -> dict:
    """One image at `steps` denoising steps with the fp16 pipeline (fp32 on a CPU), after a warm-up."""
    import torch

    from portraitkit.models.bases import load_pipeline

    cuda = torch.cuda.is_available()
    peaks = GpuPeaks()
    pipe = load_pipeline(spec["folder"], dtype=torch.float16 if cuda else torch.float32, device="cuda" if cuda else "cpu")
    size = {"height": spec["resolution"], "width": spec["resolution"]}
    pipe(CAPTION, num_inference_steps=2, generator=torch.Generator().manual_seed(0), **size)
    if cuda:
        torch.cuda.synchronize()
    began = time.perf_counter()
    pipe(CAPTION, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **size)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began
    peaks.close_phase("load_and_images")
    return {"seconds_per_image": round(elapsed, 3), "seconds_per_step": round(elapsed / steps, 4),
            "inference_steps": steps, **peaks.summary()}


def measure_load(spec: dict) -> dict:
    """RAM of what `train` holds before its first move to the GPU on the T4 recipe: the base in
    fp16 with fp32 LoRA layers added (the RamWatcher around every measurement takes the peak)."""
    import torch

    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import load_for_training

    began = time.perf_counter()
    config = TrainConfig(dataset_dir=spec["dataset"], out_dir=spec["work"], base=spec["folder"], rank=spec["rank"])
    pipe, _ = load_for_training(config, torch.float16)
    loaded = time.perf_counter() - began
    anon_after_loading = RamWatcher.anon_now()
    # Weights loaded from safetensors files of the same dtype stay in the files' memory map until
    # something reads them; moving them to the GPU reads every page once. Read them the same way.
    tensors = [t for model in pipe.components.values() if isinstance(model, torch.nn.Module)
               for t in [*model.parameters(), *model.buffers()]]
    with torch.no_grad():
        for tensor in tensors:
            tensor.sum()
    weights = sum(t.numel() * t.element_size() for t in tensors)
    return {"seconds_to_load": round(loaded, 2), "weights_gb": round(weights / GIB, 3),
            "host_anon_after_loading_gb": round(anon_after_loading / GIB, 3)}


def measure_trace(spec: dict) -> dict:
    """The real UNet's training step on the CPU under the planner's tracer (plan.check_training_step),
    and the process's growth during it beyond its fp32 weights (sampled anonymous memory)."""
    from portraitkit.plan.estimate import lora_parameter_count, parameter_counts
    from portraitkit.plan.tracing import check_training_step

    before = RamWatcher.anon_now()
    watcher = RamWatcher()
    checked = check_training_step(spec["folder"], spec["resolution"], spec["rank"])
    anon = watcher.stop()["peak_host_anon_gb"]
    weights = (parameter_counts(spec["folder"])["unet"] + lora_parameter_count(spec["folder"], spec["rank"])) * 4
    return {"live_tensor_peak_gb": round(checked["live_tensor_peak_gb"], 6),
            "traced_peak_gb": round(checked["traced_peak_gb"], 6),
            "step_growth_gb": round(anon - (before + weights) / GIB, 3) if anon else None}


def estimate(spec: dict, result: dict) -> tuple[dict | None, dict | None]:
    """portraitkit.plan.estimate's estimate for the same configuration on this machine, and the % differences."""
    import torch

    from portraitkit.plan.devices import local_cuda_device
    from portraitkit.plan.estimate import plan_run

    try:
        # `load` is the T4 recipe's loading, whatever machine measures it; `trace` a CPU step in fp32
        device = ("t4" if spec["task"] == "load" else "cpu" if spec["task"] == "trace"
                  else local_cuda_device() if torch.cuda.is_available() else "cpu")
        recipe = "plain" if spec["task"] == "plain" else "portraitkit"
        plan = plan_run(base=spec["folder"], resolution=spec["resolution"], rank=spec["rank"], gpu=device,
                        steps=spec["steps"], recipe=recipe, gradient_checkpointing=spec["task"] != NO_CHECKPOINTING,
                        advise=False)
    except Exception as error:  # the measurement stands on its own
        return {"error": f"{type(error).__name__}: {error}"}, None
    if spec["task"] == "trace":  # the planner's figure for the step's tensors, against the live ones counted
        estimated, measured = plan.breakdown_gb["training_activations_and_grads"], result.get("live_tensor_peak_gb")
        return {"live_tensor_peak_gb": estimated, "calibrated_on": plan.to_dict()["calibration"]["source"]}, (
            {"live_tensor_peak_gb": round(100 * (estimated - measured) / measured, 2)} if measured else None)
    if spec["task"] == "inference":
        figures = {**plan.inference, "seconds_per_step": plan.inference["seconds_per_image"] / plan.inference["steps"]}
    elif spec["task"] == "load":
        breakdown = plan.breakdown_gb  # unrounded: a tiny base's weights are a few MB
        loading = round(breakdown["host_ram_loading"], 2)
        # the weights it counts (the base's components and the LoRA layers), beside the tensors loaded
        weights = sum(value for key, value in breakdown.items() if key.startswith("weights_")) + breakdown["lora_params"]
        figures = {"peak_host_ram_gb": loading, "peak_host_anon_gb": loading, "weights_gb": round(weights, 3),
                   "gpu": plan.to_dict()["gpu"]}
    else:
        figures = {key: value for key, value in plan.to_dict().items()
                   if key in ("peak_gpu_mem_gb", "peak_gpu_allocated_gb", "peak_gpu_reserved_gb", "peak_host_ram_gb",
                              "seconds_per_step", "flops_per_step", "phases_gb")}
    figures["calibrated_on"] = plan.to_dict()["calibration"]["source"]
    differences = {}
    for key in ("peak_gpu_mem_gb", "peak_gpu_allocated_gb", "peak_gpu_reserved_gb", "peak_host_ram_gb", "peak_host_anon_gb",
                "seconds_per_step", "weights_gb"):
        measured, estimated = result.get(key), figures.get(key)
        if measured and estimated is not None:
            differences[key] = round(100 * (estimated - measured) / measured, 1)
    return figures, differences


def build_random_base(base: str, folder: Path) -> None:
    """The published architecture of `base` with random weights, saved like a hub download: in fp16,
    or for sd15-fp32 / sdxl-fp32 in fp32 only, like a base that has no fp16 files."""
    import torch
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from portraitkit.models.bases import tiny_tokenizer
    from portraitkit.models.architectures import ARCHITECTURES, build_component

    name, _, stored = base.partition("-")
    arch = ARCHITECTURES[name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if arch["family"] == "flux2":
        return _build_random_klein(arch, folder, device)
    torch.set_default_dtype(torch.float32 if stored == "fp32" else torch.float16)
    with torch.device(device):
        parts = {name: build_component(arch, name) for name in ("unet", "vae", "text_encoder", "text_encoder_2") if name in arch}
    torch.set_default_dtype(torch.float32)
    scheduler_class = EulerDiscreteScheduler if arch["family"] == "sdxl" else PNDMScheduler
    scheduler = scheduler_class.from_config({k: v for k, v in arch["scheduler"].items() if k != "_class_name"})
    # Token ids only index the embedding table: portraitkit's small offline tokenizer stands in for CLIP's.
    if arch["family"] == "sdxl":
        pipe = StableDiffusionXLPipeline(**parts, tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(**parts, tokenizer=tiny_tokenizer(), scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    save_atomically(pipe, folder)


def save_atomically(pipe, folder: Path) -> None:
    """The pipeline as a diffusers folder, appearing whole or not at all (a build cut short leaves none)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pipe.save_pretrained(build, safe_serialization=True)
        build.rename(folder)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _build_random_klein(arch: dict, folder: Path, device: str) -> None:
    """FLUX.2 [klein] 4B's published architecture with random fp16 weights (about 16 GB on disk:
    transformer and Qwen3-4B). Token ids only index Qwen3's embedding table: portraitkit's small
    offline byte-level tokenizer stands in for Qwen's."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    from portraitkit.models import klein
    from portraitkit.models.architectures import build_component

    torch.set_default_dtype(torch.float16)
    with torch.device(device):
        parts = {name: build_component(arch, name) for name in ("transformer", "vae", "text_encoder")}
    torch.set_default_dtype(torch.float32)
    pipe = Flux2KleinPipeline(**parts, tokenizer=klein.tiny_tokenizer(),
                              scheduler=FlowMatchEulerDiscreteScheduler(**klein.SCHEDULER), is_distilled=False)
    save_atomically(pipe, folder)


if __name__ == "__main__":
    from portraitkit.core.process import as_a_command

    as_a_command()  # as the command line it measures
    sys.exit(main())
