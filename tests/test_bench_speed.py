"""benchmarks/bench_speed.py: portraitkit's loop beside a plain diffusers + peft loop, like for like, on the tiny base."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_speed_benchmark_prints_both_loops_and_their_ratios(tmp_path):
    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_speed.py"), "--steps", "4", "--runs", "1",
                           "--defaults", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "portraitkit / plain:" in done.stdout and "default / fastest:" in done.stdout
    result = json.loads(out.read_text())
    for loop in ("plain", "portraitkit"):
        assert result[loop]["seconds_per_step"] > 0 and result[loop]["seconds_per_run"] > result[loop]["seconds_per_step"]
    assert result["step_ratio"] == round(result["portraitkit"]["seconds_per_step"] / result["plain"]["seconds_per_step"], 3)
    assert set(result["defaults"]["seconds_per_step"]) == {"default", "checkpointing on", "checkpointing off"}
