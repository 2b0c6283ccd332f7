"""How long `portraitkit plan` takes for a preset: traced afresh (before the shipped table) and
answered from the table (after), each in a fresh process, as a user runs the command.

    python benchmarks/bench_plan.py                      # sdxl on a T4, the issue's example
    python benchmarks/bench_plan.py --base sd15 --runs 3

"before" switches the table off (`tracing.use_shipped = False`) and so traces the real-size
graphs on the meta device as every plan did before the table shipped; "after" is the command
itself. Both include Python's start and portraitkit's imports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACED = ("import sys; from portraitkit.plan import tracing; tracing.use_shipped = False; "
          "from portraitkit.cli import main; sys.exit(main(sys.argv[1:]))")


def seconds(command: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="sdxl", help="a preset (default: sdxl)")
    parser.add_argument("--gpu", default="t4", help="t4, l4, a100 or cpu (default: t4)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each; the median is printed (default: 1)")
    args = parser.parse_args(argv)
    plan = ["plan", "--base", args.base, "--gpu", args.gpu]
    before = statistics.median(seconds([sys.executable, "-c", TRACED, *plan]) for _ in range(args.runs))
    after = statistics.median(seconds([sys.executable, "-m", "portraitkit", *plan]) for _ in range(args.runs))
    print(f"portraitkit plan --base {args.base} --gpu {args.gpu} ({args.runs} run(s), median, on {os.cpu_count()} CPUs):")
    print(f"  before (traced afresh): {before:.1f} s")
    print(f"  after (shipped table):  {after:.1f} s  ({before / after:.0f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
