"""Notebook 00's Colab install: everything portraitkit needs, but never a second dlib over one that works."""

from __future__ import annotations

import shlex
import sys


def test_dlib_bin_is_left_out_only_where_a_dlib_imports(monkeypatch):
    from portraitkit.colab import requirements_to_install

    with_dlib = shlex.split(requirements_to_install())
    assert not any(r.startswith("dlib-bin") for r in with_dlib)
    assert any(r.startswith("face_recognition_models") for r in with_dlib) and any(r.startswith("diffusers") for r in with_dlib)
    assert not any("extra ==" in r for r in with_dlib)  # the dev tools stay out of Colab

    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` fails: no dlib, or a broken one
    without = shlex.split(requirements_to_install())
    assert [r for r in without if not r.startswith("dlib-bin")] == with_dlib
    assert any(r.startswith("dlib-bin") for r in without)
