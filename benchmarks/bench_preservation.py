"""What output preservation costs per training step: `portraitkit train` with and without
`--output-preservation`, at identical settings, on this machine.

Output preservation runs the class caption through the UNet twice more per step (once with the
LoRA and gradients, once without either), so a step should cost about 2 to 2.5 times a plain one:
the planner's estimate (`plan.estimate`, traced FLOPs) is printed beside the measurement. Runs
alternate (plain, preserved, plain, ...) so that a busy machine slows both alike; the ratio is the
median over neighbouring pairs. The tiny base measures the mechanics' cost on a CPU, not a T4's.

    python benchmarks/bench_preservation.py                  # tiny-sd on this CPU, 64 px, 30 steps, 3 runs each
    python benchmarks/bench_preservation.py --base sd15 --resolution 512 --mixed-precision fp16   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tiny-sd")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3, help="runs of each, alternating")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--out", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    from bench_speed import make_dataset

    work = Path(tempfile.mkdtemp(prefix="bench-preservation-"))
    dataset = make_dataset(work / "dataset", max(args.resolution, 64))
    seconds = {"plain": [], "preserved": []}
    for run in range(args.runs):
        for name in seconds:
            seconds[name].append(seconds_per_step(args, dataset, work / f"{name}{run}", output_preservation=name == "preserved"))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratio = statistics.median(p / q for p, q in zip(seconds["preserved"], seconds["plain"]))
    estimated = planned_ratio(args)
    print(f"{'':12}{'s/step':>10}")
    for name, value in medians.items():
        print(f"{name:12}{value:>10.4f}")
    print(f"preserved / plain: {ratio:.2f}x per step measured, {estimated:.2f}x estimated by the planner "
          f"({args.base}, {args.resolution} px, rank {args.rank}, {args.steps} steps, {args.runs} runs each, "
          f"{'fp32' if args.mixed_precision == 'no' else args.mixed_precision})")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "seconds_per_step": seconds, "medians": medians,
                                              "ratio": round(ratio, 3), "planned_ratio": round(estimated, 3)}, indent=2) + "\n")
    return 0


def seconds_per_step(args, dataset: Path, out: Path, output_preservation: bool) -> float:
    """The median seconds of a run's steps (the first warms up), validation off: the loop alone."""
    from portraitkit.core.files import read_jsonl
    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import train

    train(TrainConfig(dataset_dir=str(dataset), out_dir=str(out), base=args.base, steps=args.steps, rank=args.rank,
                      resolution=args.resolution, mixed_precision=args.mixed_precision, optimizer="adamw",
                      checkpoint_every=0, validate=False, output_preservation=output_preservation))
    return statistics.median(row["seconds"] for row in read_jsonl(out / "train_log.jsonl")[1:])


def planned_ratio(args) -> float:
    from portraitkit.plan.estimate import plan_run

    def flops(preserve: bool) -> float:
        return plan_run(args.base, resolution=args.resolution, rank=args.rank, gpu="t4", advise=False,
                        output_preservation=preserve).flops_per_step

    return flops(True) / flops(False)


if __name__ == "__main__":
    sys.exit(main())
