"""benchmarks/bench_training.py in its CPU mode (--tiny): every configuration runs in its own
process and comes back as one JSON object with the planner's estimate beside it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_tiny_benchmark_measures_every_recipe_with_estimates(tmp_path):
    # tiny-sdxl: the harder wiring (two text encoders, added time/text conditioning); `load` runs in
    # the next test, and the planner's cost of checkpointing is tested in test_plan
    recipes = "portraitkit,plain,inference,trace"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--tiny", "--bases", "tiny-sdxl",
                           "--recipes", recipes, "--steps", "2", "--warmup", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "portraitkit's step is" in done.stdout and "est " in done.stdout

    [written] = tmp_path.glob("cpu-*.json")
    results = json.loads(written.read_text())
    assert [r["recipe"] for r in results] == recipes.split(",")
    *timed, trace = results
    for result in timed:
        assert result["status"] == "ok", result["status"]
        assert result["gpu"] is None and result["tiny"] is True and result["base"] == "tiny-sdxl"
        assert result["resolution"] == 64 and result["rank"] == 16 and result["date"] in written.name
        assert result["versions"]["torch"] and result["versions"]["diffusers"]
        for key in ("peak_gpu_mem_gb", "peak_gpu_allocated_gb", "peak_gpu_reserved_gb"):
            assert result[key] is None, key  # no GPU: nothing is invented
        assert 0.1 < result["peak_host_ram_gb"] < 8 and result["seconds_per_step"] > 0
        assert "calibrated_on" in result["estimate"]
        estimated, measured = result["estimate"]["peak_host_ram_gb"], result["peak_host_ram_gb"]
        assert result["difference_pct"]["peak_host_ram_gb"] == round(100 * (estimated - measured) / measured, 1)
    training, plain, inference = timed
    assert training["measured_steps"] == plain["measured_steps"] == 2 and training["warmup_steps"] == 1
    assert inference["inference_steps"] == 25 and inference["seconds_per_image"] > 0
    assert timed[0]["machine"]["cpu_count"] >= 1 and timed[0]["machine"]["ram_gb"] > 0

    # trace: the planner's figure for the training step's tensors (checkpointing, fp32, as on this
    # CPU) against the live tensors a real step held (tiny-sdxl: a few hundred KiB)
    assert trace["status"] == "ok" and trace["step_growth_gb"] is not None
    assert "calibrated_on" in trace["estimate"]  # the planner's estimate, not the trace's own figure
    live = trace["live_tensor_peak_gb"]
    assert abs(trace["estimate"]["live_tensor_peak_gb"] - live) < 0.05 * live
    assert trace["difference_pct"]["live_tensor_peak_gb"] == pytest.approx(
        100 * (trace["estimate"]["live_tensor_peak_gb"] - live) / live, abs=0.01)


def _may_create_memory_cgroups() -> bool:
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")):
        probe = root / f"portraitkit-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
            return True
        except OSError:
            continue
    return False


CGROUPS = _may_create_memory_cgroups()


def test_gpu_style_fresh_interpreter_launch_works_within_a_ram_cap(tmp_path):
    # On a GPU every configuration starts a new interpreter; --fresh takes that path on a CPU, and
    # so does --ram-cap-gb, which starts it inside a memory cgroup (where this machine allows one).
    capped = ["--ram-cap-gb", "4"] if CGROUPS else ["--fresh"]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_training.py"), "--tiny", "--bases", "tiny-sd",
                           "--recipes", "load", *capped, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tiny-sd load: ok" in done.stdout
    [written] = tmp_path.glob("cpu-*.json")
    [load] = json.loads(written.read_text())
    if CGROUPS:
        assert load["ram_cap_gb"] == 4 and load["peak_host_ram_gb"] < 4

    # load: RAM only, the T4 recipe's fp16 loading, set against the planner's figures for a T4 (estimated
    # in the child itself): the tensors it loaded are the weights the planner counts for them
    assert load["status"] == "ok" and load["seconds_per_step"] is None and load["peak_gpu_mem_gb"] is None
    assert 0 < load["weights_gb"] < load["peak_host_anon_gb"] <= load["peak_host_ram_gb"]
    assert load["estimate"]["gpu"] == "t4"
    assert load["weights_gb"] == pytest.approx(load["estimate"]["weights_gb"], abs=0.0005)  # to 3 decimals (fp32 would be twice)
    assert set(load["difference_pct"]) == {"peak_host_ram_gb", "peak_host_anon_gb", "weights_gb"}


@pytest.mark.skipif(not CGROUPS, reason="needs permission to create memory cgroups (root on Linux)")
def test_a_configuration_that_needs_more_than_the_cap_is_killed_and_recorded_so(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_training
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    import torch  # noqa: F401  (see below)

    cap = bench_training.RamCap(0.1)
    try:
        # Python importing torch and diffusers needs more than 0.1 GiB of its own: the kernel kills the child,
        # and the run says so. The libraries stay mapped in this process, so the child's reads of them are
        # not charged to its cgroup: it dies of its own allocations at once instead of thrashing.
        from portraitkit.models.bases import tiny_base_folder

        spec = {"task": "load", "base": "tiny-sd", "folder": str(tiny_base_folder("tiny-sd")), "dataset": str(tmp_path),
                "rank": 4, "resolution": 64, "steps": 1, "warmup": 0, "work": str(tmp_path / "run")}
        result = bench_training.run_fresh(spec, cap=cap, timeout=120)
    finally:
        cap.close()
    assert result["status"] == "out of RAM: killed under the 0.1 GiB cap", result["status"]
    assert result["ram_cap_gb"] == 0.1 and result["recipe"] == "load"
