"""benchmarks/bench_speed.py: portraitkit's loop beside a plain diffusers + peft loop, like for like, on the tiny base."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_speed_benchmark_prints_both_loops_and_their_ratios(tmp_path, capsys, monkeypatch):
    # in this process (its libraries are loaded already): the benchmark runs both loops in one process too
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import bench_speed

    out = tmp_path / "speed.json"
    assert bench_speed.main(["--steps", "4", "--runs", "1", "--defaults", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "portraitkit / plain:" in printed and "default / fastest:" in printed
    result = json.loads(out.read_text())
    for loop in ("plain", "portraitkit"):
        assert result[loop]["seconds_per_step"] > 0 and result[loop]["seconds_per_run"] > result[loop]["seconds_per_step"]
    [pk], [plain] = result["portraitkit"]["runs"], result["plain"]["runs"]  # one pair of runs
    assert result["step_ratio"] == round(pk["seconds_per_step"] / plain["seconds_per_step"], 3)
    assert set(result["defaults"]["seconds_per_step"]) == {"default", "checkpointing on", "checkpointing off"}
