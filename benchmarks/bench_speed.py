"""Training speed like for like: `portraitkit train` beside a plain diffusers + peft loop at identical
settings, and portraitkit's defaults beside its fastest settings that fit.

Both loops run the same base, resolution, batch, LoRA rank and targets, steps, precision and
optimizer (32-bit AdamW, no gradient checkpointing by default); what differs is what portraitkit
does on purpose: latents and text embeddings encoded once, only the UNet in the loop. The plain
loop is the one most tutorials write: the VAE and the text encoder run in every step. Runs
alternate (plain, portraitkit, plain, ...) so that a busy machine slows both alike. Printed:
seconds per step (median) and wall seconds per run (loading and saving included) of each, and
the two ratios portraitkit / plain (each the median over neighbouring pairs of runs).

    python benchmarks/bench_speed.py                      # tiny-sd on this CPU, 64 px, 60 steps, 3 runs each
    python benchmarks/bench_speed.py --base sd15 --resolution 512 --steps 30 --mixed-precision fp16   # on a GPU

portraitkit's runs skip validation (`validate=False`) so that both do the same work; the time a
full run spends outside its loop is in its config.json (`seconds_by_phase`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTION = "a photo of sks person"
AS_ARGS = "as --gradient-checkpointing says"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tiny-sd")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--runs", type=int, default=3, help="runs of each loop, alternating")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in both loops")
    parser.add_argument("--defaults", action="store_true",
                        help="also time portraitkit's default settings against its fastest that fit")
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    dataset = make_dataset(work / "dataset", max(args.resolution, 64))
    timings = {"plain": [], "portraitkit": []}
    for run in range(args.runs):
        timings["plain"].append(plain_loop(args, dataset))
        timings["portraitkit"].append(portraitkit_loop(args, dataset, work / f"run{run}"))
    result = {"settings": vars(args), "plain": summary(timings["plain"]), "portraitkit": summary(timings["portraitkit"])}
    # Each ratio is the median over the pairs of neighbouring runs: a machine whose speed drifts
    # (a shared VM's neighbours, clock changes) slows both runs of a pair alike.
    for ratio, key in (("step_ratio", "seconds_per_step"), ("run_ratio", "seconds_per_run")):
        result[ratio] = round(statistics.median(mine[key] / plain[key] for mine, plain in zip(timings["portraitkit"], timings["plain"])), 3)
    print(f"{'':14}{'s/step':>10}{'s/run':>10}")
    for name in ("plain", "portraitkit"):
        print(f"{name:14}{result[name]['seconds_per_step']:>10.4f}{result[name]['seconds_per_run']:>10.2f}")
    print(f"portraitkit / plain: {result['step_ratio']:.2f}x per step, {result['run_ratio']:.2f}x per run "
          f"({args.base}, {args.resolution} px, batch {args.batch_size}, rank {args.rank}, {args.steps} steps, "
          f"{args.mixed_precision} precision, 32-bit AdamW, checkpointing {'on' if args.gradient_checkpointing else 'off'})")

    if args.defaults:
        # the default beside "off", which the planner picks wherever RAM allows: neighbours in time, as above
        choices = {"default": None, "checkpointing off": False, "checkpointing on": True}
        per_step = {}
        for run in range(args.runs):
            for index, (name, choice) in enumerate(choices.items()):
                timing = portraitkit_loop(args, dataset, work / f"defaults{run}-{index}", checkpointing=choice, optimizer="adamw8bit")
                per_step.setdefault(name, []).append(timing["seconds_per_step"])
        medians = {name: statistics.median(values) for name, values in per_step.items()}
        fastest = min((name for name in medians if name != "default"), key=medians.get)
        over = statistics.median(d / f for d, f in zip(per_step["default"], per_step[fastest]))  # pairs, as above
        result["defaults"] = {"seconds_per_step": medians, "fastest": fastest, "default_over_fastest": round(over, 3)}
        print("portraitkit's defaults: " + ", ".join(f"{k} {v:.4f} s/step" for k, v in medians.items())
              + f"; default / fastest: {result['defaults']['default_over_fastest']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def make_dataset(folder: Path, resolution: int, count: int = 4) -> Path:
    """A few crops of a real public-domain portrait, with captions, in prep's imagefolder layout."""
    import matplotlib.cbook
    from PIL import Image

    folder.mkdir(parents=True)
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rows = []
    for index in range(count):
        box = (80 + 10 * index, 30 + 10 * index, 400 - 10 * index, 350 - 10 * index)
        photo.crop(box).resize((resolution, resolution), Image.LANCZOS).save(folder / f"photo_{index}.png")
        rows.append({"file_name": f"photo_{index}.png", "text": CAPTION})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def summary(runs: list[dict]) -> dict:
    return {"seconds_per_step": round(statistics.median(r["seconds_per_step"] for r in runs), 4),
            "seconds_per_run": round(statistics.median(r["seconds_per_run"] for r in runs), 2), "runs": runs}


def portraitkit_loop(args, dataset: Path, out: Path, checkpointing=AS_ARGS, optimizer: str = "adamw") -> dict:
    """`train` itself; `checkpointing` None leaves the choice to train's default (the planner)."""
    from portraitkit.core.files import read_jsonl
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    began = time.perf_counter()
    train(TrainConfig(dataset_dir=str(dataset), out_dir=str(out), base=args.base, steps=args.steps, rank=args.rank,
                      resolution=args.resolution, batch_size=args.batch_size, mixed_precision=args.mixed_precision,
                      optimizer=optimizer, checkpoint_every=0, validate=False,
                      gradient_checkpointing=args.gradient_checkpointing if checkpointing is AS_ARGS else checkpointing))
    wall = time.perf_counter() - began
    seconds = [row["seconds"] for row in read_jsonl(out / "train_log.jsonl")]
    return timing(seconds, wall)


def plain_loop(args, dataset: Path) -> dict:
    """bench_training's plain loop at these settings, timed from loading to its last step (it saves
    nothing; portraitkit's runs also write both LoRA files)."""
    import torch

    from bench_training import plain_loop as loop

    began = time.perf_counter()
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    seconds = loop(args.base, sorted(dataset.glob("*.png")), args.resolution, args.rank, args.steps, args.batch_size,
                   half=half, checkpointing=args.gradient_checkpointing)
    return timing(seconds, time.perf_counter() - began)


def timing(step_seconds: list[float], wall: float) -> dict:
    """One run's figures: the median step after the first (which warms up), the wall time, and every step's seconds."""
    return {"seconds_per_step": statistics.median(step_seconds[1:]), "seconds_per_run": wall, "step_seconds": step_seconds}


if __name__ == "__main__":
    sys.exit(main())
