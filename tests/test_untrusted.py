"""Untrusted input stays inside its folder: a dataset row naming a file elsewhere is refused in
one sentence naming the row; a link in a photos folder that leads out of it is never read."""

from __future__ import annotations

import json
import shutil

import pytest

from portraitkit.cli import main


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/passwd", "masks/../../secret.jpg"])
def test_a_dataset_row_naming_a_file_outside_the_dataset_is_refused_by_name(face_dataset, tmp_path, capsys, name):
    dataset = tmp_path / "dataset"
    shutil.copytree(face_dataset, dataset)
    shutil.copy(next(dataset.glob("*.png")), tmp_path / "secret.jpg")  # a readable image, where the row points
    lines = (dataset / "metadata.jsonl").read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "file_name": name})
    (dataset / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    for command in (["train", str(dataset), "--out", str(tmp_path / "run"), "--base", "tiny-sd", "--steps", "1"],
                    ["pick", str(tmp_path), "--reference", str(dataset)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"line 2 names file_name {name!r}, outside the dataset folder" in err and "Traceback" not in err, command[0]
    assert not (tmp_path / "run").exists()


def test_prep_reads_no_link_that_leads_out_of_the_photos_folder(samples_dir, tmp_path):
    from portraitkit.prep import PrepConfig, prepare

    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir(), elsewhere.mkdir()
    shutil.copy(samples_dir / "hopper.jpg", photos / "hopper.jpg")
    shutil.copy(samples_dir / "astronaut.jpg", elsewhere / "private.jpg")
    (photos / "linked.jpg").symlink_to(elsewhere / "private.jpg")
    (photos / "linked_folder").symlink_to(elsewhere, target_is_directory=True)
    (photos / "same_photo_again.jpg").symlink_to(photos / "hopper.jpg")  # a link inside the folder is the learner's own
    result = prepare(photos, tmp_path / "dataset", PrepConfig(resolution=128))
    report = json.loads((tmp_path / "dataset" / "report.json").read_text())
    sources = {entry["source"] for entry in result.entries}
    assert sources == {"hopper.jpg", "same_photo_again.jpg"}  # the outside file was never opened
    reason = "(a link to a file outside the photos folder: not read)"
    assert f"linked.jpg {reason}" in report["summary"]["ignored_files"]  # said, with why (a linked folder is not entered at all)
