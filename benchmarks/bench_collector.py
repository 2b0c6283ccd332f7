"""Python's collector in a command's process: `portraitkit demo` (tiny base, the smallest useful size)
at Python's default thresholds (before) and at `core.process.as_a_command`'s (after), each in a fresh
process, alternating, with the collections counted and timed through `gc.callbacks`.

    python benchmarks/bench_collector.py            # 3 runs of each, medians printed
    python benchmarks/bench_collector.py --runs 5

The figures describe this machine; CPU time (user + system) is printed beside the wall time, as
other work on a shared machine moves the wall time more than the CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = ["demo", "--train-steps", "2", "--styles", "studio,outdoor", "--per-style", "1", "--sample-steps", "2"]

# The demo as `python -m portraitkit` runs it, with the collector's work recorded; THRESHOLDS is
# None for the command line's own setting, or the thresholds to set instead of it.
CHILD = """
import gc, json, sys, time
import portraitkit.core.process as process
THRESHOLDS = {thresholds}
if THRESHOLDS is not None:
    process.as_a_command = lambda: gc.set_threshold(*THRESHOLDS)
found = {{"collections": 0, "full": 0, "seconds": 0.0}}
began = [0.0]
def record(phase, info):
    if phase == "start":
        began[0] = time.perf_counter()
    else:
        found["collections"] += 1
        found["full"] += info["generation"] == 2
        found["seconds"] += time.perf_counter() - began[0]
gc.callbacks.append(record)
sys.argv = ["portraitkit", *{argv}]
import runpy
try:
    runpy.run_module("portraitkit", run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
found["thresholds"] = list(gc.get_threshold())
print("COLLECTOR " + json.dumps(found))
"""


def run(thresholds, out: Path) -> dict:
    code = CHILD.format(thresholds=thresholds, argv=[*DEMO, "--out", str(out)])
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next(line for line in done.stdout.splitlines() if line.startswith("COLLECTOR "))
    return {**json.loads(line.split(" ", 1)[1]), "wall": wall,
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each; medians are printed (default: 3)")
    args = parser.parse_args(argv)
    cases = {"before (Python's 700, 10, 10)": (700, 10, 10), "after (as_a_command)": None}
    results = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as work:
        for index in range(args.runs):
            for name, thresholds in cases.items():  # alternating, so a slow spell hits both
                results[name].append(run(thresholds, Path(work) / f"{index}-{len(results[name])}-{thresholds}"))
    print(f"portraitkit demo (tiny base), {args.runs} fresh processes each, medians:")
    print(f"{'':32s} {'thresholds':>16s} {'collections':>12s} {'full':>5s} {'GC s':>6s} {'CPU s':>6s} {'wall s':>7s}")
    for name, rows in results.items():
        median = lambda key: statistics.median(row[key] for row in rows)  # noqa: E731
        print(f"{name:32s} {str(tuple(rows[0]['thresholds'])):>16s} {median('collections'):12.0f} {median('full'):5.0f} "
              f"{median('seconds'):6.2f} {median('cpu'):6.1f} {median('wall'):7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
