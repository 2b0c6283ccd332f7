"""Atomic writes: complete or absent, and with the mode the umask asks for (tempfile's files are
0600 and its folders 0700, safetensors writes 0600 whatever the umask, and a rename keeps that)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from portraitkit.core.files import atomic_path, save_image, shareable, umask, write_json


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_written_files_and_folders_get_the_mode_the_umask_gives(tmp_path, mask, file_mode, folder_mode):
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    previous = os.umask(mask)
    try:
        assert umask() == mask
        written = [write_json(tmp_path / "a.json", {"a": 1}), save_image(tmp_path / "b.png", Image.new("RGB", (4, 4)))]
        with atomic_path(tmp_path / "c.safetensors") as tmp:
            save_file({"x": torch.zeros(1)}, tmp)
        written.append(tmp_path / "c.safetensors")
        folder = Path(tempfile.mkdtemp(dir=tmp_path))  # a checkpoint assembled before its rename
        save_file({"x": torch.zeros(1)}, folder / "lora.safetensors")
        shareable(folder)
        (tmp_path / "plain.txt").write_text("what open() gives")  # the reference
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == file_mode
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in written} == {path.name: file_mode for path in written}
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    assert stat.S_IMODE((folder / "lora.safetensors").stat().st_mode) == file_mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    write_json(tmp_path / "a.json", {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text('{"half')
            raise RuntimeError("disconnected")
    assert (tmp_path / "a.json").read_text() == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
