"""A full disk (Colab's Drive quota, a small SD card) is one sentence naming the folder and the
space, at every writer, with nothing half-written left and what was saved before intact."""

from __future__ import annotations

import errno
import json

import pytest
from PIL import Image

from portraitkit.cli import main
from portraitkit.core import files
from portraitkit.core.errors import DiskFull


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),  # Python, PIL, matplotlib
    OSError(errno.EDQUOT, "Disk quota exceeded"),  # a quota (Drive, a shared server)
    Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"),  # safetensors
])
def test_each_writer_s_full_disk_is_one_sentence_and_the_old_file_survives(tmp_path, failure):
    target = tmp_path / "out" / "identity.json"
    files.write_json(target, {"step": 1})
    with pytest.raises(DiskFull) as raised:
        with files.atomic_path(target, needs=3 << 20) as tmp:
            tmp.write_text("half a file")
            raise failure
    message = str(raised.value)
    assert str(target.parent) in message and "identity.json" in message and "3.0 MB" in message and message.count(". ") <= 1
    assert json.loads(target.read_text()) == {"step": 1}  # the old content, whole
    assert [p.name for p in target.parent.iterdir()] == ["identity.json"]  # no temporary file left behind


def test_a_writer_that_names_no_cause_is_judged_by_the_space_left(tmp_path, monkeypatch):
    """torch.save says only "PytorchStreamWriter failed writing file": a disk left all but empty says why."""
    with pytest.raises(RuntimeError):  # room left: a real error, passed on as it is
        with files.atomic_path(tmp_path / "optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0")
    monkeypatch.setattr(files, "free_bytes", lambda folder: 4096)
    with pytest.raises(DiskFull, match="4 KB free"):
        with files.atomic_path(tmp_path / "optimizer.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0")


def test_training_that_fills_the_disk_says_so_and_resumes(face_dataset, tmp_path, monkeypatch, capsys):
    """The second checkpoint meets a full disk: one sentence with the command that resumes; the
    first checkpoint is intact and the run resumes from it once there is room."""
    import safetensors.torch

    from portraitkit.train import checkpoints

    run = tmp_path / "run"
    args = ["train", str(face_dataset), "--out", str(run), "--base", "tiny-sd", "--steps", "2", "--rank", "4",
            "--optimizer", "adamw", "--checkpoint-every", "1", "--no-validate"]
    real = safetensors.torch.save_file
    calls = []

    def fills_up(tensors, path, *rest, **kwargs):
        calls.extend(["checkpoint"] if "checkpoints" in str(path) else [])
        if calls == ["checkpoint"] * 2 and "checkpoints" in str(path):  # the step-2 checkpoint
            raise Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })")
        return real(tensors, path, *rest, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fills_up)
    assert main(args) == 2
    said = capsys.readouterr().err
    err = said.strip().splitlines()[-1]  # after the progress bars, the one line
    assert "Traceback" not in said and err.startswith("portraitkit train: The disk holding")
    assert "is full" in err and str(run / "checkpoints") in err and "--resume" in err
    assert [step for step, _ in checkpoints.complete_checkpoints(run)] == [1]  # the one before, whole
    assert not list((run / "checkpoints").glob(".writing-*"))
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert main([*args, "--resume"]) == 0
    assert "resum" in capsys.readouterr().out.lower() and (run / "pytorch_lora_weights.safetensors").is_file()


def test_sample_and_prep_say_a_full_disk_in_one_sentence(samples_dir, tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.open(samples_dir / "hopper.jpg").save(photos / "hopper.jpg")
    monkeypatch.setattr(Image.Image, "save", enospc)
    assert main(["prep", str(photos), "--out", str(tmp_path / "dataset")]) == 2
    said = capsys.readouterr().err
    err = said.strip().splitlines()[-1]
    assert "is full" in err and str(tmp_path / "dataset") in err and err.startswith("portraitkit prep: ") and "Traceback" not in said
