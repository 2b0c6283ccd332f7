"""benchmarks/bench_training.py in its CPU mode (--tiny): every configuration runs in its own
process and comes back as one JSON object with the planner's estimate beside it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_tiny_benchmark_measures_every_recipe_with_estimates(tmp_path):
    # tiny-sdxl: the harder wiring (two text encoders, added time/text conditioning)
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--tiny", "--bases", "tiny-sdxl",
                           "--steps", "2", "--warmup", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "portraitkit's step is" in done.stdout and "est " in done.stdout

    [written] = tmp_path.glob("cpu-*.json")
    results = json.loads(written.read_text())
    assert [r["recipe"] for r in results] == ["portraitkit", "portraitkit_no_checkpointing", "plain", "inference"]
    for result in results:
        assert result["status"] == "ok", result["status"]
        assert result["gpu"] is None and result["tiny"] is True and result["base"] == "tiny-sdxl"
        assert result["resolution"] == 64 and result["rank"] == 16 and result["date"] in written.name
        assert result["versions"]["torch"] and result["versions"]["diffusers"]
        for key in ("peak_gpu_mem_gb", "peak_gpu_allocated_gb", "peak_gpu_reserved_gb"):
            assert result[key] is None, key  # no GPU: nothing is invented
        assert 0.1 < result["peak_host_ram_gb"] < 8 and result["seconds_per_step"] > 0
        assert result["estimate"]["peak_host_ram_gb"] > 0 and "calibrated_on" in result["estimate"]
        assert "peak_host_ram_gb" in result["difference_pct"] and "seconds_per_step" in result["difference_pct"]
    training = results[0]
    assert training["measured_steps"] == 2 and training["warmup_steps"] == 1
    assert results[3]["inference_steps"] == 25 and results[3]["seconds_per_image"] > 0
    # each training recipe is set against the planner's estimate of that same recipe
    assert results[1]["estimate"]["seconds_per_step"] < results[0]["estimate"]["seconds_per_step"]


def test_gpu_style_fresh_interpreter_launch_works(tmp_path):
    # on a GPU every configuration starts a new interpreter; --fresh takes that path on a CPU
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--tiny", "--fresh", "--bases",
                           "tiny-sdxl", "--recipes", "inference"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny-sdxl inference: ok" in done.stdout and "Wrote" not in done.stdout  # --tiny writes nothing by default
