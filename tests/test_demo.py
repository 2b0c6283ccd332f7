"""The demo end to end on the sample photos and the tiny base, at the smallest useful size, run as
a user runs it: a fresh process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from portraitkit.cli import main

TOY_LINE = "is an offline toy base with random weights: its images are noise, not portraits"

# A fresh process as a Zen 4 or Sapphire Rapids laptop runs it, on any CPU: bitsandbytes' native
# check for AVX512-BF16 answers yes (so its import reaches for the `kernels` package, as there), a
# `kernels` stand-in records any request for a kernel from the Hub, and an audit hook records every
# host looked up. What it saw is written to the JSON file named by $SEEN at exit. (`kernels` is the
# package bitsandbytes would fetch the kernel with; transformers 5 requires it, so it is installed.)
AS_ON_ZEN4 = """
import atexit, importlib.abc, importlib.util, json, os, runpy, sys

seen = {"hosts": [], "kernels": []}
sys.addaudithook(lambda event, args: seen["hosts"].append(str(args[0])) if event == "socket.getaddrinfo" else None)
atexit.register(lambda: open(os.environ["SEEN"], "w").write(json.dumps(seen)))
try:
    import kernels  # the real package (transformers 5 requires it), its one way to the Hub recorded instead
    kernels.get_kernel = lambda *args, **kwargs: seen["kernels"].append(args[0]) or (_ for _ in ()).throw(RuntimeError("Hub"))
except ImportError:  # older transformers: without `kernels`, bitsandbytes has no way to the Hub to take
    pass


class Bf16(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name != "bitsandbytes.functional" or getattr(self, "finding", False):
            return None
        self.finding = True
        try:
            self.spec = importlib.util.find_spec(name)
        finally:
            self.finding = False
        self.loader = self.spec.loader
        self.spec.loader = self
        return self.spec

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.has_avx512bf16 = lambda: True


sys.meta_path.insert(0, Bf16())
if sys.argv[1:2] == ["-c"]:
    exec(sys.argv[2])
else:
    runpy.run_module("portraitkit", run_name="__main__")
"""


def run_as_on_zen4(args: list[str], tmp_path, **env) -> tuple[subprocess.CompletedProcess, dict]:
    seen = tmp_path / "seen.json"
    environment = {**os.environ, "TQDM_DISABLE": "1", "SEEN": str(seen), **env}  # progress bars aside, stderr stays empty
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):  # as a user's machine: not told to stay offline
        environment.pop(name, None)
    done = subprocess.run([sys.executable, "-c", AS_ON_ZEN4, *args], env=environment, capture_output=True, text=True, timeout=300)
    return done, json.loads(seen.read_text()) if seen.is_file() else {}


def test_the_hub_kernel_path_is_reached_here_and_taken_only_when_asked(tmp_path):
    """The forcing works on this CPU, whatever it is: with PORTRAITKIT_HUB_KERNELS=1 bitsandbytes
    asks for its Hub kernel, so the demo's test below, which asserts that nothing was asked without
    it (diffusers importing bitsandbytes there), sees what a Zen 4 sees."""
    pytest.importorskip("kernels")
    _, asked = run_as_on_zen4(["-c", "import portraitkit, bitsandbytes"], tmp_path, PORTRAITKIT_HUB_KERNELS="1")
    assert asked["kernels"] == ["kernels-community/quantization-bitsandbytes"]


def test_demo_runs_every_stage_and_reports_them(tmp_path, umask_022, private_paths, capsys):
    """Every stage (prep, train with validation, sample from the run, pick) in one fresh process, so
    the libraries' import-time and loading notices (torchvision, optional kernels, fp32 casts, LoRA
    without text-encoder keys) are seen as a user sees them: stderr stays empty; and, on a CPU with
    AVX512-BF16 as on any other, no host is looked up."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--train-steps", "2", "--styles", "studio,outdoor", "--per-style", "1", "--sample-steps", "2"]
    done, seen = run_as_on_zen4(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", f"portraitkit demo wrote to stderr: {done.stderr}"
    assert seen == {"hosts": [], "kernels": []}  # no host looked up, no kernel asked for: the offline demo is offline
    printed = done.stdout
    assert "report.html" in printed
    assert printed.count(TOY_LINE) == 1  # the toy base says so once, not once per stage
    assert [line for line in printed.splitlines() if line.startswith("== ")] == [
        "== prep ==", "== train ==", "== sample ==", "== pick ==", "== scorer check =="]

    # prep: the sample folder's Grace Hopper photos in, the stranger, duplicate and no-face photos out
    report = json.loads((out / "dataset" / "report.json").read_text())
    decisions = {photo["source"]: photo["status"] for photo in report["photos"]}
    assert decisions["hopper.jpg"] == "accepted"
    assert decisions["astronaut.jpg"] == decisions["coffee.jpg"] == decisions["hopper_duplicate.jpg"] == "rejected"

    # train: a LoRA, and an honest identity record (the tiny base draws no faces)
    run = out / "run"
    assert (run / "pytorch_lora_weights.safetensors").is_file()
    identity = json.loads((run / "identity.json").read_text())
    assert [row["step"] for row in identity["steps"]] == [1, 2]
    assert identity["best_step"] is None and identity["reference_faces"] > 0
    assert all(row["likeness"] is None and row["reason"] for row in identity["steps"])

    # sample and pick: every portrait listed, each ranked with the reason it has no score
    manifest = json.loads((out / "portraits" / "manifest.json").read_text())
    assert [(entry["style"], entry["seed"]) for entry in manifest] == [("studio", 0), ("outdoor", 0)]
    ranking = json.loads((out / "portraits" / "ranking.json").read_text())
    assert {row["file"] for row in ranking} == {entry["file"] for entry in manifest}
    assert all(row["identity_distance"] is None and row["reasons"] == ["no face found"] for row in ranking)
    checked = [row["file"] for row in json.loads((out / "scorer_check" / "ranking.json").read_text())]
    assert checked[0] == "hopper.jpg" and checked.index("astronaut.jpg") < checked.index("coffee.jpg") == 3

    # the report: every stage, and a self-contained folder (every link is relative and exists)
    html = (out / "report.html").read_text()
    for heading in ["1. Photos", "2. Training", "3. Styled portraits", "4. Ranking", "tiny-sd"]:
        assert heading in html
    # beside the toy run's empty likeness curve, the worked example measured on real photos, drawn and read
    assert "likeness_worked_example.png" in html and "kept as best/" in html and "give a training photo back" in html
    links = re.findall(r'(?:src|href)="?([^" >]+)', html)
    assert links and all(not link.startswith(("/", "http")) and (out / link).is_file() for link in links)
    seconds = json.loads((out / "demo.json").read_text())["seconds"]
    assert set(seconds) == {"prep", "train", "sample", "pick", "scorer check"}
    assert private_paths(out) == []  # every output readable by others under umask 022

    # Run again into the same folder (here in this process): the dataset (the same photos and settings),
    # the finished run, the portraits and the scorer check are kept, not redone.
    kept = {path: path.stat().st_mtime_ns for path in [
        out / "dataset" / "report.json", out / "dataset" / "hopper.png", out / "dataset" / "contact_sheet.png",
        run / "pytorch_lora_weights.safetensors", out / "portraits" / manifest[0]["file"], out / "scorer_check" / "ranking.json"]}
    assert main(args) == 0
    assert {path: path.stat().st_mtime_ns for path in kept} == kept
    assert "prep: kept, made from the same photos and settings" in capsys.readouterr().out


def test_what_a_dataset_was_made_from_changes_with_any_photo_or_setting(tmp_path):
    """The demo keeps its dataset, and the class a learner's finished stages, only for the same photos and settings."""
    import os

    from portraitkit.demo import fingerprint

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"one")
    settings = {"resolution": 256, "allow_same_photograph": True}
    before = fingerprint(photos, settings)
    (photos / "trip").mkdir()
    assert fingerprint(photos, settings) == before  # an empty folder adds no photo
    assert fingerprint(photos, dict(reversed(settings.items()))) == before  # the order settings are given in aside
    assert fingerprint(photos, {**settings, "resolution": 512}) != before
    stat = (photos / "a.jpg").stat()
    os.utime(photos / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # edited in place
    assert fingerprint(photos, settings) != before
    touched = fingerprint(photos, settings)
    (photos / "a.jpg").write_bytes(b"three")
    os.utime(photos / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # the same time, another size
    assert fingerprint(photos, settings) != touched
    resized = fingerprint(photos, settings)
    (photos / "trip" / "b.jpg").write_bytes(b"")  # prep reads sub-folders too
    assert fingerprint(photos, settings) not in (before, touched, resized)
