"""The command line as a new user meets it: every mistake exits non-zero with one sentence that
names the fix, before anything is trained or written; a run works from any working folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from portraitkit.cli import main
from portraitkit.models.lora import LORA_FILE

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, portrait_path):
    """Three 64 px crops of a real portrait with captions, as prep lays a dataset out."""
    folder = tmp_path_factory.mktemp("dataset")
    photo = Image.open(portrait_path).convert("RGB")
    rows = []
    for index, (left, top, size) in enumerate([(100, 40, 300), (120, 60, 280), (80, 30, 340)]):
        photo.crop((left, top, left + size, top + size)).resize((64, 64), Image.LANCZOS).save(folder / f"{index}.png")
        rows.append({"file_name": f"{index}.png", "text": "a photo of zwx woman"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset):
    """A one-step run trained with relative paths, from the dataset's parent folder."""
    where = tmp_path_factory.mktemp("work")
    (where / "data").symlink_to(dataset, target_is_directory=True)
    before = os.getcwd()
    os.chdir(where)
    try:
        code = main(["train", "data", "--out", "run", "--base", "tiny-sd", "--steps", "1", "--rank", "2", "--optimizer", "adamw",
                     "--checkpoint-every", "0", "--validation-steps", "1", "--validation-seeds", "0"])
    finally:
        os.chdir(before)
    assert code == 0
    return where / "run"


def fails(capsys, argv, *expected) -> str:
    """Run the CLI; assert it exits 2 with one line naming each expected fragment, no traceback."""
    code = main(argv)
    error = capsys.readouterr().err
    assert code == 2, error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    for fragment in expected:
        assert fragment in error, error
    return error


@pytest.mark.parametrize("steps", ["-5", "0"])
def test_train_refuses_steps_below_one_and_saves_nothing(tmp_path, capsys, dataset, steps):
    fails(capsys, ["train", str(dataset), "--out", str(tmp_path / "run"), "--steps", steps], "--steps must be at least 1")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--resolution", "333"], "multiple of 8 between 64 and 2048"),
    (["--rank", "0"], "--rank must be at least 1"),
    (["--lr", "0"], "--lr must be above 0"),
    (["--grad-accum", "0"], "--grad-accum must be at least 1"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be at least 1"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),  # nan passes every comparison
    (["--noise-offset", "inf"], "--noise-offset must be a finite number, got inf"),
])
def test_train_checks_its_numbers_before_any_folder_is_written(tmp_path, capsys, dataset, argv, expected):
    fails(capsys, ["train", str(dataset), "--out", str(tmp_path / "run"), *argv], expected)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["prep", "plan", "train", "sample"])
def test_one_resolution_rule_for_every_stage(tmp_path, capsys, dataset, trained, samples_dir, command):
    argv = {"prep": ["prep", str(samples_dir), "--out", str(tmp_path / "out")],
            "plan": ["plan", "--base", "tiny-sd"],
            "train": ["train", str(dataset), "--out", str(tmp_path / "out")],
            "sample": ["sample", str(trained), "--out", str(tmp_path / "out")]}[command]
    fails(capsys, [*argv, "--resolution", "333"], "--resolution 333 is not usable: choose a multiple of 8 between 64 and 2048")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--steps", "-5"], "--steps must be at least 1"),
    (["--per-style", "0"], "--per-style must be at least 1"),
    (["--guidance-scale", "-1"], "--guidance-scale must be at least 0"),
    (["--guidance-scale", "nan"], "--guidance-scale must be a finite number, got nan"),
    (["--lora-scale", "nan"], "--lora-scale must be a finite number, got nan"),  # not "SDXL's VAE overflows" after loading
    (["--lora-scale=-inf"], "--lora-scale must be a finite number, got -inf"),
])
def test_sample_checks_its_numbers_before_loading_anything(tmp_path, capsys, trained, argv, expected):
    fails(capsys, ["sample", str(trained), "--out", str(tmp_path / "images"), *argv], expected)
    assert not (tmp_path / "images").exists()


def test_sample_into_the_run_folder_itself_is_refused_with_a_folder_to_use(tmp_path, capsys, trained):
    before = sorted(p.name for p in trained.iterdir())
    fails(capsys, ["sample", str(trained), "--out", str(trained)], f"choose another folder, e.g. --out {trained / 'portraits'}")
    assert sorted(p.name for p in trained.iterdir()) == before


def test_run_stores_absolute_paths_and_samples_from_any_folder(trained, tmp_path, monkeypatch):
    settings = json.loads((trained / "config.json").read_text())["settings"]
    assert os.path.isabs(settings["dataset_dir"]) and os.path.isabs(settings["out_dir"])
    assert (trained / LORA_FILE).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the dataset's relative path as typed would not be found from here
    assert main(["sample", str(trained), "--out", "images", "--styles", "studio", "--per-style", "1", "--steps", "1"]) == 0
    manifest = json.loads((elsewhere / "images" / "manifest.json").read_text())
    assert [entry["token"] for entry in manifest] == ["zwx"]  # read from the run's dataset


def test_train_on_a_photo_folder_suggests_prep_into_another_folder(tmp_path, capsys, samples_dir):
    error = fails(capsys, ["train", str(samples_dir), "--out", str(tmp_path / "run")], "portraitkit prep")
    suggested = error.split("--out ")[1].split("`")[0]
    assert os.path.abspath(suggested) != str(samples_dir) and suggested.endswith("samples-dataset")
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_dataset_prep_found_too_small(tmp_path, capsys, dataset):
    import shutil

    small = tmp_path / "small"
    shutil.copytree(dataset, small)
    message = "Only 3 of 3 photos are usable and at least 5 are needed: add 2 or more sharp, well-lit photos."
    (small / "report.json").write_text(json.dumps({"summary": {"enough_to_train": False, "message": message}}))
    fails(capsys, ["train", str(small), "--out", str(tmp_path / "run")], "too few usable photos", "add 2 or more")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["demo", "train"])
def test_a_real_base_without_network_fails_before_the_slow_stages(tmp_path, capsys, dataset, command):
    out = tmp_path / "out"
    argv = ["demo", "--out", str(out)] if command == "demo" else ["train", str(dataset), "--out", str(out)]
    began = time.perf_counter()
    fails(capsys, [*argv, "--base", "sd15"], "could not load base model", "--base tiny-sd")  # tests run with HF_HUB_OFFLINE=1
    assert time.perf_counter() - began < 5
    assert not out.exists()  # no prep done, no folder left behind


def test_a_misspelt_hub_id_fails_in_seconds_not_after_retries(tmp_path):
    # A hub that refuses connections at once: huggingface_hub's download would retry for ~40 s.
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": REPO_ROOT}
    env.pop("HF_HUB_OFFLINE", None)
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "portraitkit", "plan", "--base", "nobody/no-such-model"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "could not load base model 'nobody/no-such-model'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Retrying" not in done.stderr
    assert time.perf_counter() - began < 10


# --- the mistakes of issue 23: each refused in one sentence, before anything is rendered or written ---


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    """`python -m portraitkit ARGV` in a fresh process, as a user runs it (offline: conftest's environment)."""
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "portraitkit", *argv], env=env, capture_output=True, text=True, timeout=300)


def refused(done: subprocess.CompletedProcess, *expected: str) -> str:
    """Exit 2, one line on stderr naming each expected fragment, no traceback."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for fragment in expected:
        assert fragment in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize("command", ["prep", "train", "sample", "demo"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(command, tmp_path, dataset, trained, samples_dir):
    out = "/proc/portraitkit-cannot-write-here/out"  # /proc takes no new folders, even from root
    argv = {"prep": ["prep", str(samples_dir)], "train": ["train", str(dataset), "--base", "tiny-sd"],
            "sample": ["sample", str(trained), "--styles", "studio", "--per-style", "1", "--steps", "1"],
            "demo": ["demo"]}[command]
    done = run_cli(*argv, "--out", out)
    refused(done, f"--out {out} cannot be written", "/proc refuses new files", "choose a folder you can write to")
    assert done.stdout == ""  # the stage never started: no photo checked, no model loaded, nothing rendered


def test_an_output_path_through_a_file_is_refused_and_leaves_nothing(tmp_path, capsys, dataset):
    (tmp_path / "notes.txt").write_text("mine")
    fails(capsys, ["train", str(dataset), "--out", str(tmp_path / "notes.txt" / "run"), "--base", "tiny-sd"],
          "cannot be written", "notes.txt is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # the writability probe left nothing behind


def test_a_lora_rank_above_256_is_refused_with_the_reason(tmp_path, dataset):
    done = run_cli("train", str(dataset), "--out", str(tmp_path / "run"), "--base", "tiny-sd", "--rank", "100000")
    refused(done, "--rank 100000 is above 256", "person LoRAs use 4-32")
    assert not (tmp_path / "run").exists()


def test_rank_256_is_still_allowed(tmp_path, dataset):
    from portraitkit.train.config import TrainConfig, check_config

    assert check_config(TrainConfig(dataset_dir=str(dataset), out_dir=str(tmp_path / "run"), base="tiny-sd", rank=256)).rank == 256


def test_resume_of_a_folder_that_does_not_exist_is_refused(tmp_path, capsys, dataset):
    missing = tmp_path / "rnu"  # a typo for run
    fails(capsys, ["train", str(dataset), "--out", str(missing), "--base", "tiny-sd", "--resume"],
          f"cannot resume {missing}: there is no such folder", "leave out --resume")
    assert not missing.exists()


@pytest.mark.parametrize("command", ["train", "sample"])
def test_a_damaged_config_json_is_one_sentence(command, tmp_path, capsys, dataset, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").write_text('{"settings": {"dataset_dir": "/data", "ste')  # cut short by a disconnect
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    argv = {"train": ["train", str(dataset), "--out", str(run), "--base", "tiny-sd", "--resume"],
            "sample": ["sample", str(run), "--out", str(tmp_path / "images")]}[command]
    fails(capsys, argv, f"{run / 'config.json'} is damaged (not valid JSON", "Unterminated string starting at: line 1, column 39", "restore it from a copy")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before and not (tmp_path / "images").exists()
    assert (run / "config.json").read_text().endswith('"ste')  # not overwritten either


def test_a_styles_file_with_a_syntax_error_says_where(tmp_path):
    styles = tmp_path / "mine.yaml"
    styles.write_text("beach:\n  description: On the beach\n  prompt: photo of {token}: {class_word}\n")
    refused(run_cli("styles", "--styles-file", str(styles)), "mine.yaml is not valid YAML",
            "mapping values are not allowed here at line 3, column 27", "fix the file")
    styles.write_text('beach:\n  prompt: "photo of {token} {class_word}\n')  # an unclosed quote: where it opened
    refused(run_cli("styles", "--styles-file", str(styles)), "while scanning a quoted scalar at line 2, column 11")


def test_train_without_base_trains_the_real_sd15_not_a_toy(tmp_path, dataset):
    from portraitkit.train.config import TrainConfig

    assert TrainConfig(dataset_dir="d", out_dir="o").base == "sd15"
    # offline (conftest), the real base cannot load: refused in seconds, instead of noise from the toy
    done = run_cli("train", str(dataset), "--out", str(tmp_path / "run"))
    refused(done, "could not load base model 'stable-diffusion-v1-5/stable-diffusion-v1-5'", "--base tiny-sd")
    assert not (tmp_path / "run").exists()


TOY_LINE = "is an offline toy base with random weights: its images are noise, not portraits"


def test_a_toy_base_says_once_that_its_images_are_noise_and_a_real_one_does_not(capsys, monkeypatch, tmp_path):
    import portraitkit.demo

    assert main(["plan", "--base", "tiny-sd"]) == 0
    assert capsys.readouterr().out.count(TOY_LINE) == 1
    assert main(["plan", "--base", "sd15"]) == 0
    assert TOY_LINE not in capsys.readouterr().out
    monkeypatch.setattr(portraitkit.demo, "demo", lambda config: tmp_path / "report.html")
    assert main(["demo", "--out", str(tmp_path)]) == 0  # demo's default base is the toy
    assert capsys.readouterr().out.count(f"tiny-sd {TOY_LINE}") == 1


def test_an_interrupted_run_says_the_exact_command_that_continues_it(tmp_path, capsys, monkeypatch, dataset):
    import shlex

    import portraitkit.train.loop

    def interrupted(config, on_step=None):  # Ctrl-C after the run folder was written
        (tmp_path / "my run").mkdir()
        (tmp_path / "my run" / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(portraitkit.train.loop, "train", interrupted)
    argv = ["train", str(dataset), "--out", str(tmp_path / "my run"), "--base", "tiny-sd", "--steps", "5"]
    assert main(argv) == 130
    error = capsys.readouterr().err.strip()
    assert error.startswith("portraitkit train: interrupted; continue from the last checkpoint with `portraitkit ")
    assert shlex.split(error.split("`")[1]) == ["portraitkit", *argv, "--resume"]  # pasted as it is, spaces included


def test_a_toy_base_cached_by_other_library_versions_is_built_again_not_reused(tmp_path, monkeypatch):
    """A folder that another transformers saved (5.x writes only tokenizer.json, 4.x cannot read it)
    must never be loaded: every run failed with advice about spelling and the network."""
    import shutil

    from portraitkit.models import bases

    built = bases.tiny_base_folder("tiny-sd")  # this session's, for the installed libraries
    monkeypatch.setenv("PORTRAITKIT_CACHE", str(tmp_path))
    stale = [tmp_path / "bases" / f"tiny-sd-v{bases.TINY_VERSION}",  # before the versions were in the name
             tmp_path / "bases" / f"tiny-sd-v{bases.TINY_VERSION}-diffusers0.31-transformers4.41"]  # a faked other version
    for folder in stale:
        shutil.copytree(built, folder)
        shutil.rmtree(folder / "tokenizer")  # unreadable here, as a 5.x tokenizer is under 4.x
        (folder / "tokenizer").mkdir()
    pipeline = bases.load_pipeline("tiny-sd")
    assert pipeline.tokenizer("a photo of sks person").input_ids  # a working tokenizer: not a stale folder
    assert bases.resolve_base("tiny-sd").source not in {str(folder) for folder in stale}
    assert bases.library_versions() in bases.resolve_base("tiny-sd").source
