"""benchmarks/gpu_check.sh, the first command on a borrowed GPU, kept from rotting: its --tiny
mode runs the same script on a tiny base on the CPU. The tiny base has random weights: this
proves the mechanics of the check, never a GPU figure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_tiny_check_trains_samples_and_writes_one_json_with_the_t4_estimates(tmp_path):
    """Both families in one run, as on a GPU (where klein4b comes last): SDXL's UNet and FLUX.2 [klein]'s
    transformer each train, sample and record the recipe the planner chose for a T4 (the toy klein:
    fp16; the real klein4b on a GPU: NF4, which this cannot run)."""
    done = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--tiny", "--bases", "tiny-sdxl,tiny-klein"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TQDM_DISABLE": "1", "PYTHON": sys.executable})  # this interpreter, activated or not
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["tiny"] is True and result["gpu"] is None and result["versions"]["diffusers"]
    assert result["complete"] is True  # every base asked for was checked (the file is rewritten after each)
    assert list(result["bases"]) == ["tiny-sdxl", "tiny-klein"]
    for name, check in result["bases"].items():
        assert check["status"] == "ok", name
        assert len(check["train"]["losses"]) == 2 and all(math.isfinite(loss) for loss in check["train"]["losses"])
        assert {"load", "cache", "steps", "checkpoints", "save"} <= set(check["train"]["seconds_by_phase"])
        # the portrait was rendered and passed sample's NaN/black guard
        assert check["sample"]["decode"]["problem"] is None and check["sample"]["decode"]["size"] == [64, 64]
        assert "peak_gpu_allocated_gb" not in check  # no GPU: no GPU figure is invented
        estimate = check["estimate_t4"]  # the planner's answer for a T4, beside
        assert estimate["peak_gpu_mem_gb"] > 0 and isinstance(estimate["gradient_checkpointing"], bool)
        assert check["train"]["gradient_checkpointing"] == estimate["gradient_checkpointing"]
    klein = result["bases"]["tiny-klein"]
    assert klein["train"]["quantize"] == klein["estimate_t4"]["quantize"] == "none"
    # sampling follows the planner's T4 recipe too (the real klein4b's: NF4), and its estimate is recorded beside it
    assert klein["sample"]["quantize"] == klein["estimate_t4"]["inference"]["quantize"] == "none"
    assert klein["estimate_t4"]["inference"]["peak_gpu_mem_gb"] > 0


def test_a_gpu_without_bf16_trains_in_fp16(monkeypatch, tmp_path):
    """What the check relies on to forbid bf16 on a GPU that has it: `auto` asks torch."""
    import torch

    from portraitkit.train.config import TrainConfig
    from portraitkit.train.loop import resolved_precision

    config = TrainConfig(dataset_dir=str(tmp_path), out_dir=str(tmp_path / "run"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolved_precision(config, gpu=True) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolved_precision(config, gpu=True) == "bf16"


def test_the_carried_wheels_fit_a_device_call():
    rows = [line.split() for line in (REPO / "benchmarks" / "gpu_wheels.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    wheels = {name.split("==")[0]: int(size) for name, size in rows}
    # what train and sample import that a bare torch + transformers machine lacks (face models: --no-validate)
    assert {"diffusers", "bitsandbytes", "datasets", "dill", "multiprocess"} <= set(wheels)
    assert all("==" in name for name, _ in rows)  # exact versions: the list is what was measured
    assert sum(wheels.values()) < 60 * 2**20
