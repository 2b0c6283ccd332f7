"""How long `portraitkit demo` takes with its defaults on the tiny base (the issue asks for under
3 minutes on 2 CPU cores), from a cold start: a fresh process and an empty model cache, so the
one-off build of the tiny base is counted, as a new user's first run would count it.

    python benchmarks/bench_demo.py            # prints seconds per stage and in total

It runs `python -m portraitkit demo --out TMP` in a subprocess with PORTRAITKIT_CACHE and
HF_HOME pointed at a temporary folder, then reads the stage times the demo records in demo.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="portraitkit-bench-demo-") as tmp:
        env = {**os.environ, "PORTRAITKIT_CACHE": str(Path(tmp) / "cache"), "HF_HOME": str(Path(tmp) / "hf"),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
        out = Path(tmp) / "demo"
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "portraitkit", "demo", "--out", str(out)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = time.perf_counter() - began
        stages = json.loads((out / "demo.json").read_text())["seconds"]
    print(f"CPU cores available: {os.cpu_count()}")
    for stage, seconds in stages.items():
        print(f"{stage:>13}: {seconds:6.1f} s")
    print(f"{'stages':>13}: {sum(stages.values()):6.1f} s")
    print(f"{'whole command':>13}: {total:6.1f} s  (imports, tiny-base build and report included; target: under 180 s)")


if __name__ == "__main__":
    main()
