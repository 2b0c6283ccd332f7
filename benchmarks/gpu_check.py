"""The GPU check: the first thing to run on a borrowed GPU machine, as one command.

    benchmarks/gpu_check.sh OUT_DIR            # a CUDA GPU: real-size SD1.5, SDXL and FLUX.2 [klein] 4B, random weights
    benchmarks/gpu_check.sh OUT_DIR --tiny     # the same script on the tiny bases, on a CPU (CI)

It needs torch with CUDA and nothing from the network: gpu_check.sh first installs the wheels
carried beside the repository in .whl/ (benchmarks/gpu_wheels.txt lists them; `gpu_check.sh
--download` fetches them on a machine with a network). Then, per base, in a fresh process held to
a T4's memory (torch.cuda.set_per_process_memory_fraction: 14.75 GiB) with bf16 reported absent
(a T4 has none, so `--mixed-precision auto` picks fp16):

1. the real-size architecture (models/architectures.py) with random weights, saved as fp16
   safetensors like a download (bench_training.build_random_base);
2. `train` on the T4 recipe (fp16 weights, fp32 LoRA rank 16, 8-bit AdamW, gradient checkpointing
   where the planner chooses it for a T4, one checkpoint, --no-validate), a few steps; for klein4b
   the transformer in 4-bit NF4 where the planner chooses it for a T4 (it does: fp16 needs more RAM
   than a free Colab has), so the first GPU run measures the QLoRA recipe no CPU can run;
3. `sample`: one portrait at the base's size, at the steps the planner's sampling estimate is for
   (the styles' own: 30, klein's 50), with the recipe it chose for a T4 (klein4b: the transformer
   in NF4, Qwen3 on the GPU only to encode the prompt), SDXL's VAE decoding as sampling does it,
   checked for NaN or all-black pixels;
4. peaks of torch.cuda's allocated and reserved memory per phase of the run (load, cache, steps,
   checkpoints, save, sample), seconds per step, peak RAM, and the planner's estimate for a T4
   beside each.

One JSON, OUT_DIR/gpu_check.json, holds it all with the software versions. What it cannot tell:
speed on this GPU is not a T4's (an H200 computes ~10x faster); random weights say nothing of
likeness nor of whether SDXL's real VAE overflows in fp16 (its random copy need not); RAM is this
machine's, not Colab's. Memory is what the recipe allocates, which is what the cap checks.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_training as bench  # noqa: E402  (the random bases, peaks and versions are shared with the benchmark)

T4_GIB = 14.75  # what PyTorch reports as a free Colab T4's total capacity (plan/devices.py)
GIB = 2**30
CHILD_ENV = {**bench.CHILD_ENV, "PORTRAITKIT_SKIP_PLAN": "1"}  # the T4's plan is made here, not for this GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="folder for gpu_check.json")
    parser.add_argument("--tiny", action="store_true", help="the tiny bases on this machine's CPU, in this process (CI)")
    parser.add_argument("--bases", help="comma-separated (default sd15,sdxl,klein4b; tiny-sd,tiny-sdxl,tiny-klein with --tiny)")
    parser.add_argument("--steps", type=int, help="training steps per base (default 6; 2 with --tiny); the first is warm-up")
    parser.add_argument("--cache", help="where the random-weight bases are built (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(bench.MARK + json.dumps(check_base(json.loads(args.child))), flush=True)
        return 0

    import torch

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here; run it with --tiny to check the script on a CPU")
    bases = (args.bases or ("tiny-sd,tiny-sdxl,tiny-klein" if args.tiny else "sd15,sdxl,klein4b")).split(",")
    work = Path(tempfile.mkdtemp(prefix="portraitkit-gpu-check-"))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "tiny": args.tiny,
              "gpu": bench.gpu_name(), "machine": bench.machine(), "versions": bench.versions(),
              "t4_memory_cap_gib": None if args.tiny else T4_GIB, "bases": {}}
    began = time.perf_counter()
    from portraitkit.core.files import write_json

    path = Path(args.out) / "gpu_check.json"
    for base in bases:
        folder = bench.prepare_base(base, args.cache or str(work / "bases"))
        resolution = bench.resolution_of(folder)
        spec = {"base": base, "folder": str(folder), "resolution": resolution, "steps": args.steps or (2 if args.tiny else 6),
                "sample_steps": 2 if args.tiny else None, "dataset": str(bench.make_dataset(work / f"data-{resolution}", resolution)),
                "work": str(work / base), "cap_gib": None if args.tiny else T4_GIB}
        result["bases"][base] = check_base(spec) if args.tiny else run_child(spec)
        print(f"{base}: {result['bases'][base]['status']}", flush=True)
        # written after every base: a borrowed machine's time limit that cuts the last base short
        # (klein4b builds and loads 16 GB) still leaves the figures of the ones before
        result["seconds"] = round(time.perf_counter() - began, 1)
        result["complete"] = base == bases[-1]
        write_json(path, result)
    print(f"Wrote {path}")
    return 0 if all(r["status"] == "ok" for r in result["bases"].values()) else 1


def run_child(spec: dict) -> dict:
    """One base in a fresh interpreter: the memory cap and the peaks belong to it alone."""
    done = subprocess.run([sys.executable, __file__, spec["work"], "--child", json.dumps(spec)],
                          env={**os.environ, **CHILD_ENV}, capture_output=True, text=True)
    lines = [line[len(bench.MARK):] for line in done.stdout.splitlines() if line.startswith(bench.MARK)]
    if lines:
        return json.loads(lines[-1])
    return {"status": f"crashed (exit {done.returncode}): {(done.stderr.strip().splitlines() or ['no output'])[-1][:300]}"}


def check_base(spec: dict) -> dict:
    """Train and sample one base on the T4 recipe; every figure beside the planner's for a T4."""
    import torch

    os.environ.update(CHILD_ENV)
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(spec["cap_gib"] * GIB / torch.cuda.get_device_properties(0).total_memory)
    torch.cuda.is_bf16_supported = lambda *args, **kwargs: False  # a T4: fp16 only, as `auto` must find
    plan = t4_plan(spec)
    peaks, watcher = Peaks(), bench.RamWatcher()
    result = {"status": "ok", "resolution": spec["resolution"], "steps": spec["steps"]}
    try:
        with peaks.per_phase():
            result["train"] = train_t4(spec, plan)
        result["sample"] = sample_one(spec, peaks, plan["inference"])
    except Exception as error:  # out of memory under the cap is a result, not a crash
        result["status"] = f"{'out of memory' if 'out of memory' in str(error).lower() else 'error'}: " \
                           f"{type(error).__name__}: {str(error)[:300]}"
    result.update(peaks.summary(), **watcher.stop())
    result["estimate_t4"] = plan
    return result


def t4_plan(spec: dict) -> dict:
    """The planner's answer for this base on a T4, with train's defaults (it chooses checkpointing)."""
    from portraitkit.plan.estimate import plan_run

    plan = plan_run(base=spec["folder"], resolution=spec["resolution"], rank=16, gpu="t4", steps=spec["steps"], advise=False)
    figures = plan.to_dict()
    return {key: figures[key] for key in ("peak_gpu_allocated_gb", "peak_gpu_reserved_gb", "peak_gpu_mem_gb",
                                          "peak_host_ram_gb", "seconds_per_step", "phases_gb", "inference")} | {
        "gradient_checkpointing": plan.config.gradient_checkpointing, "quantize": plan.config.quantize}


def train_t4(spec: dict, plan: dict) -> dict:
    import torch

    from portraitkit.core.files import read_jsonl
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import resolved_precision, train

    config = TrainConfig(dataset_dir=spec["dataset"], out_dir=str(Path(spec["work"]) / "run"), base=spec["folder"],
                         steps=spec["steps"], rank=16, optimizer="adamw8bit", mixed_precision="auto",
                         gradient_checkpointing=plan["gradient_checkpointing"], checkpoint_every=spec["steps"], validate=False,
                         quantize=plan["quantize"])  # FLUX.2: the planner's T4 recipe (NF4 or fp16); SD: none
    run = train(config)
    rows = read_jsonl(run / "train_log.jsonl")
    seconds = [row["seconds"] for row in rows[1:]] or [rows[0]["seconds"]]  # the first step warms up
    return {"mixed_precision": resolved_precision(config, torch.cuda.is_available()),
            "gradient_checkpointing": plan["gradient_checkpointing"], "quantize": plan["quantize"],
            "seconds_per_step": round(statistics.median(seconds), 4),
            "losses": [row["loss"] for row in rows], "seconds_by_phase": json.loads((run / "config.json").read_text())["seconds_by_phase"]}


def sample_one(spec: dict, peaks: Peaks, planned: dict) -> dict:
    """One portrait as `portraitkit sample` makes it, with the T4's sampling recipe (`planned`, the
    plan's `inference`); a NaN or black decode is refused there, and recorded here."""
    import numpy as np
    from PIL import Image

    from portraitkit.core.errors import PortraitkitError
    from portraitkit.sample.render import SampleConfig, sample

    config = SampleConfig(run_dir=str(Path(spec["work"]) / "run"), out_dir=str(Path(spec["work"]) / "images"),
                          styles=["studio"], per_style=1, steps=spec["sample_steps"] or planned["steps"], token="sks",
                          class_word="person", quantize=planned.get("quantize") or "auto")
    peaks.start()
    began = time.perf_counter()
    try:
        [entry] = sample(config)
        image = np.asarray(Image.open(Path(config.out_dir) / entry["file"]).convert("RGB"), dtype=np.float64)
        decode = {"problem": None, "mean_pixel": round(float(image.mean()), 2), "size": list(image.shape[:2])}
    except PortraitkitError as error:  # sample's guard: NaN or an all-black image
        decode = {"problem": str(error)}
    seconds = time.perf_counter() - began
    peaks.close_phase("sample")
    return {"steps": config.steps, "quantize": config.quantize, "seconds_with_loading": round(seconds, 2), "decode": decode}


class Peaks(bench.GpuPeaks):
    """torch.cuda's peaks per phase of `train` (its PhaseClock's phases), the highest of each
    phase's spells (the steps pause for checkpoints)."""

    def start(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def close_phase(self, name: str) -> None:
        before = self.phases.get(name)
        super().close_phase(name)
        if before and name in self.phases:
            self.phases[name] = {key: max(before[key], self.phases[name][key]) for key in before}

    @contextlib.contextmanager
    def per_phase(self):
        from portraitkit.train.phases import PhaseClock

        start, stop = PhaseClock.start, PhaseClock.stop

        def started(clock, phase):
            self.start()
            start(clock, phase)

        def stopped(clock, phase):
            stop(clock, phase)
            self.close_phase(phase)

        PhaseClock.start, PhaseClock.stop = started, stopped
        try:
            yield
        finally:
            PhaseClock.start, PhaseClock.stop = start, stop


if __name__ == "__main__":
    from portraitkit.core.process import as_a_command

    as_a_command()  # as the command line it measures
    sys.exit(main())
