"""Data-parallel training as the field launches it: `accelerate launch --num_processes 2`, here on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from portraitkit.models.lora import LORA_FILE, kohya_file
from portraitkit.train.config import TrainConfig
from portraitkit.train.loop import train

# A warm-up over all three steps: the learning rate differs at each, so a schedule stepped once per
# process (or shifted by a resume with another process count) shows in the log.
SETTINGS = dict(base="tiny-sd", steps=3, rank=4, lr=1e-3, optimizer="adamw", checkpoint_every=2, validation_steps=2,
                warmup_steps=3)


def launch(dataset, out, *extra):
    # --cpu: accelerate's launcher starts one process (it starts N only with an MPI host file);
    # portraitkit starts the other with torchrun, as --multi_gpu does.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "portraitkit", "train", str(dataset), "--out", str(out),
               *[f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()], *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def lora_weights(run) -> dict:
    from safetensors.torch import load_file

    return load_file(run / LORA_FILE)


def distance(a: dict, b: dict) -> float:
    import torch

    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_two_processes_train_like_the_doubled_batch_write_once_and_resume_in_one(tmp_path, face_dataset):
    """One two-process run (the slowest thing the suite does: two fresh interpreters) read for all
    that only two processes can show."""
    import pytest

    single = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / "b1"), batch_size=1, **SETTINGS))
    doubled = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / "b2"), batch_size=2, **SETTINGS))
    run = tmp_path / "two"
    done = launch(face_dataset, run, "--batch-size=1", "--steps=2")  # two processes, one image each per step
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("LoRA saved in") == 2  # both processes finish; one wrote
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]  # logged once, not once per process
    assert kohya_file(run).is_file() and (run / "validation" / "step_000002.png").is_file()
    assert json.loads((run / "config.json").read_text())["processes"] == 2

    # One process at twice the batch continues the two-process checkpoint of step 2 to step 3.
    resumed = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(run), batch_size=2, resume=True, **SETTINGS))
    log = [json.loads(line) for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3]
    # accelerate steps a prepared scheduler once per process at each optimizer step: unless stepped
    # once, the warm-up would run twice as fast under two processes ([2/3, 1, 1] of the rate), and the
    # one-process resume would continue another schedule. constant_with_warmup: a third more each step.
    assert [row["lr"] for row in log] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    two, b1, b2 = lora_weights(resumed), lora_weights(single), lora_weights(doubled)
    # the same batches, split in two: the doubled batch's LoRA (float sums in another order), not the single one's
    assert distance(two, b2) < 0.02 * distance(b1, b2)


def test_a_run_reports_where_its_time_went_and_can_skip_validation(tmp_path, face_dataset):
    began = time.perf_counter()
    run = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / "run"), **SETTINGS))
    wall = time.perf_counter() - began
    phases = json.loads((run / "config.json").read_text())["seconds_by_phase"]
    assert {"load", "cache", "steps", "validation", "scoring", "checkpoints", "save", "plots"} <= set(phases)
    # the phases split the run: none is counted twice (validation inside the steps, say), so together
    # they fit in its wall time (each is rounded to a millisecond)
    assert sum(phases.values()) <= wall + 0.001 * len(phases)
    logged = sum(json.loads(line)["seconds"] for line in (run / "train_log.jsonl").read_text().splitlines())
    assert phases["steps"] >= 0.9 * logged  # the loop's own time, validation and checkpoints apart

    quick = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(tmp_path / "quick"), validate=False, **SETTINGS))
    assert not (quick / "validation").exists() and not (quick / "identity.json").exists()
    assert {"validation", "scoring"}.isdisjoint(json.loads((quick / "config.json").read_text())["seconds_by_phase"])
    assert (quick / LORA_FILE).is_file()
    again = train(TrainConfig(dataset_dir=str(face_dataset), out_dir=str(quick), validate=False, resume=True, **SETTINGS))
    assert again == quick  # finished without validation images: nothing to redo


def test_the_process_count_is_read_from_accelerates_command_line():
    import pytest

    from portraitkit.core.errors import PortraitkitError
    from portraitkit.train.launch import cpu_processes_asked

    lone = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    script = ["/venv/bin/python", "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "3", "-m", "portraitkit", "train", "DATA"]
    module = ["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes=4", "-m", "portraitkit", "train", "DATA"]
    assert cpu_processes_asked(lone, script) == 3 and cpu_processes_asked(lone, module) == 4
    assert cpu_processes_asked({**lone, "WORLD_SIZE": "3", "LOCAL_RANK": "0"}, script) == 1  # one of the three
    assert cpu_processes_asked({"ACCELERATE_USE_CPU": "True"}, script) == 1  # asked for one: no MASTER_PORT
    assert cpu_processes_asked({}, script) == 1  # not launched by accelerate --cpu
    with pytest.raises(PortraitkitError, match="--multi_gpu --num_processes N"):
        cpu_processes_asked(lone, ["python", "my_wrapper.py"])  # how many cannot be known: say how to launch
    with pytest.raises(PortraitkitError, match="MPI host file"):
        cpu_processes_asked(lone, [*script[:4], "--num_machines", "2", *script[4:]])
