"""A workshop's class on local Ray: three learners, one whose photos cannot be used, then a resume."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("ray")

from portraitkit.classroom import _start_ray  # noqa: E402
from portraitkit.cli import main  # noqa: E402


@pytest.fixture
def running_ray():
    """Ray started as the class starts it, kept over both runs (as in a teacher's notebook): the
    second run then reuses its workers instead of starting and importing them anew."""
    import ray

    _start_ray(None)
    yield ray
    ray.shutdown()

PERSON = ["hopper.jpg", "hopper_soft.jpg", "hopper_phone_sideways.jpg", "hopper_tilted_bright.jpg",
          "hopper_warm_closeup.jpg", "hopper_greyscale.png"]


def test_a_class_runs_each_learner_alone_and_resumes(tmp_path, samples_dir, capsys, umask_022, private_paths, running_ray):
    root = tmp_path / "photos"
    for learner, names in {"ada": PERSON, "grace": PERSON[1:] + ["hopper_mirrored_dim.webp"],
                           "nobody": ["coffee.jpg", "two_people.jpg"]}.items():
        (root / learner).mkdir(parents=True)
        for name in names:
            shutil.copy2(samples_dir / name, root / learner / name)
    out = tmp_path / "class"
    args = ["class", str(root), "--out", str(out), "--base", "tiny-sd", "--train-steps", "2", "--styles", "studio",
            "--per-style", "1", "--sample-steps", "2", "--allow-same-photograph"]
    assert main(args) == 1  # one learner failed, said so, and the others finished
    assert running_ray.is_initialized()  # the notebook's Ray is left running for the next call
    printed = capsys.readouterr().out
    assert "2 of 3 learners done" in printed and "nobody: prep:" in printed

    record = json.loads((out / "class.json").read_text())
    assert record["runner"]["name"] == "ray"
    learners = record["learners"]
    for name in ("ada", "grace"):
        assert learners[name]["status"] == "done" and learners[name]["done"] == ["prep", "train", "sample", "pick"]
        assert set(learners[name]["seconds"]) == {"prep", "train", "sample", "pick"}
        ranking = json.loads((out / name / "portraits" / "ranking.json").read_text())
        assert [row["file"] for row in ranking] == ["studio_seed0_steps2.png"]  # --sample-steps 2 is in the name
        assert (out / name / "run" / "pytorch_lora_weights.safetensors").is_file()
        assert (out / name / "run" / f"{name}.safetensors").is_file()  # each learner's file for A1111 by their name
    assert learners["nobody"]["status"] == "failed" and learners["nobody"]["reason"].startswith("prep: ")
    assert not (out / "nobody" / "run").exists()  # nothing trained on photos prep refused
    page = (out / "class.html").read_text()
    assert "ada/portraits/picks.png" in page and "grace/portraits/picks.png" in page and "nobody" in page
    assert private_paths(out) == []  # a teacher's web server can serve every learner's files (umask 022)

    # Again: the finished learners' stages are skipped (no new work, the same files), the failed one retried.
    lora = out / "ada" / "run" / "pytorch_lora_weights.safetensors"
    written = lora.stat().st_mtime_ns
    assert main(args) == 1
    again = json.loads((out / "class.json").read_text())["learners"]
    assert again["ada"]["seconds"] == learners["ada"]["seconds"] and lora.stat().st_mtime_ns == written
    assert again["nobody"]["status"] == "failed"


def test_a_class_folder_without_learners_is_refused_in_one_sentence(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["class", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) != 0
    assert "has no sub-folder with photos" in capsys.readouterr().err
