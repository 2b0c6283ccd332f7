"""Every notebook in notebooks/ runs headless from top to bottom on CPU, so a broken lesson fails CI.

Each notebook has a code cell tagged `parameters` (papermill's convention). The test inserts a
cell right after it that overrides some of those values, from OVERRIDES below, so a notebook
runs small; a notebook without an entry runs with its defaults. Notebooks run in a temporary
working folder, with the `python3` kernel pointed at the interpreter running the tests.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# per notebook: parameter overrides (name -> value, written with repr) and a timeout in seconds
OVERRIDES: dict[str, dict] = {
    "01_lens_distortion.ipynb": {"params": {"CURVE_POINTS": 8, "MAX_SIDE": 400, "DISTANCES_CM": [20, 30.5, 60, 152.4, 300]}, "timeout": 120},
    "02_light_and_processing.ipynb": {"params": {"MAX_SIDE": 400, "LEVELS": [0.0, 0.5, 1.0]}, "timeout": 120},
    # 00 and 03-06 share one work folder, as in Colab, so 03 -> 04 -> 05 -> 06 chain (sorted order):
    # each notebook runs in its own tmp folder under the session's basetemp, so "../course" is
    # the same folder for all of them and a fresh one in every test session. Tiny base, 64 px.
    "00_setup.ipynb": {"params": {"WORK_DIR": "../course"}, "timeout": 60},
    # 03 takes the route of a learner without photos: the course's samples, copied in by the notebook.
    "03_prepare_photos.ipynb": {"params": {"WORK_DIR": "../course", "USE_SAMPLES": True, "RESOLUTION": 128}, "timeout": 120},
    "04_train_lora.ipynb": {"params": {"WORK_DIR": "../course", "BASE": "tiny-sd", "STEPS": 4, "RANK": 4, "RESOLUTION": 64,
                                       "CHECKPOINT_EVERY": 2, "VALIDATE_EVERY": 2, "VALIDATION_STEPS": 2}, "timeout": 180},
    "05_styled_portraits.ipynb": {"params": {"WORK_DIR": "../course", "STYLES": ["studio", "outdoor"], "PER_STYLE": 2,
                                             "STEPS": 2}, "timeout": 180},
    "06_final_picks.ipynb": {"params": {"WORK_DIR": "../course", "TOP": 4}, "timeout": 120},
}
DEFAULT_TIMEOUT = 600


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    """A `python3` kernelspec for this interpreter, found before any other on JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }))
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    # The kernel's own default (matplotlib-inline), as in JupyterLab and Colab: with Agg a figure
    # that the inline backend would show as text looks the same as one it draws.
    monkeypatch_module.delenv("MPLBACKEND", raising=False)
    return root


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def with_overrides(notebook, params: dict) -> None:
    """Insert a cell setting `params` right after the cell tagged `parameters`."""
    index = next((i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])), None)
    assert index is not None, "every notebook needs a code cell tagged `parameters`"
    if params:
        source = "# injected by tests/test_notebooks.py\n" + "\n".join(f"{name} = {value!r}" for name, value in params.items())
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = ["injected-parameters"]
        notebook.cells.insert(index + 1, cell)


# 03 -> 04 -> 05 -> 06 read what the one before wrote; run alone (`-k 05`), a notebook first runs
# the ones it needs, so every test stands on its own and none runs twice in a whole session (one
# pytest-xdist worker runs a whole file: pyproject's --dist loadfile).
CHAIN = ["03_prepare_photos.ipynb", "04_train_lora.ipynb", "05_styled_portraits.ipynb", "06_final_picks.ipynb"]
_EXECUTED: set[str] = set()


def execute(name: str, folder):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert notebook.metadata.get("accelerator") == "GPU" and notebook.metadata["colab"]["gpuType"] == "T4"
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    assert "colab-badge.svg" in notebook.cells[0].source
    settings = OVERRIDES.get(name, {})
    with_overrides(notebook, settings.get("params", {}))
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=settings.get("timeout", DEFAULT_TIMEOUT),
        resources={"metadata": {"path": str(folder)}},
    )
    with client.setup_kernel():  # as client.execute(), then the exercises again, on the same kernel
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        problems = output_problems(notebook)
        check_exercises(client, notebook, name)
    _EXECUTED.add(name)
    assert not problems, f"{name}: " + "; ".join(problems)
    return notebook


def check_exercises(client, notebook, name: str) -> None:
    """Each exercise that asks for a prediction shows the measured answer when none is given, and
    run again with a wrong prediction fails saying what was measured (`teach.exercises.check`)."""
    from nbclient.exceptions import CellExecutionError

    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code" or not cell.source.startswith("prediction = None"):
            continue
        assert "exercises.check(prediction," in cell.source, f"{name} cell {index} asks for a prediction it never checks"
        said = "".join(output.get("text", "") for output in cell.get("outputs", []) if output.get("output_type") == "stream")
        found = re.search(r"The answer: (.+?)\. Set prediction = one of (.+?) before", said)
        assert found, f"{name} cell {index} did not show its answer: {said[-300:]}"
        answer, choices = found.group(1), re.findall(r"'([^']*)'", found.group(2))
        wrong = next(choice for choice in choices if choice != answer)
        retry = nbformat.v4.new_code_cell(cell.source.replace("prediction = None", f"prediction = {wrong!r}", 1))
        with pytest.raises(CellExecutionError, match=f"you predicted '{re.escape(wrong)}'; it measured '{re.escape(answer)}'"):
            client.execute_cell(retry, index)


def output_problems(notebook) -> list[str]:
    """What a learner would see that is wrong: stderr text (warnings, tracebacks printed by
    libraries) and figures shown as their text repr instead of a picture."""
    problems = []
    for number, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr" and output.get("text", "").strip():
                problems.append(f"cell {number} wrote to stderr: {output['text'].strip()[:300]}")
            data = output.get("data", {})
            if set(data) == {"text/plain"} and str(data["text/plain"]).startswith("<Figure size"):
                problems.append(f"cell {number} shows a figure as text: {data['text/plain']}")
            if "Generating train split" in json.dumps(output):  # datasets' cache at work, not the learner's
                problems.append(f"cell {number} shows datasets' progress bar")
    return problems


def printed(notebook, cell_id: str) -> str:
    """What the cell with this id printed."""
    [cell] = [cell for cell in notebook.cells if cell.get("id") == cell_id]
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def check_04(notebook, work) -> None:
    """The LoRA layer built by hand is asserted equal to peft's, at two alphas, and said so. Beside
    the toy run's empty likeness curve, the worked example on real photos is drawn and read: the
    person's other photos kept as best/, edits of the training photos refused as copies; the
    proportions line says what it found."""
    [cell] = [cell for cell in notebook.cells if cell.get("id") == "04-lora2"]
    assert "assert torch.allclose(mine(x), theirs(x)" in cell.source and "lora.add_adapters" in cell.source
    assert printed(notebook, "04-lora2").count("largest difference from peft") == 2
    assert "Proportions:" in printed(notebook, "04-16") or "wider against your face" in printed(notebook, "04-16")
    example = printed(notebook, "04-examplec")
    steps = {entry.split(" ")[1]: entry for entry in re.split(r"\n(?=step )", example)}
    assert "kept as best/" in steps["300"] and "person's other shots" in steps["300"]
    assert "give a training photo back" in steps["500"] and "kept as best/" not in steps["100"]
    assert max(map(len, example.splitlines())) <= 100
    [cell] = [cell for cell in notebook.cells if cell.get("id") == "04-examplec"]
    assert any("image/png" in output.get("data", {}) for output in cell.outputs)


def check_05(notebook, work) -> None:
    """The count 05 prints is the count of portraits in the folder, and the manifest lists exactly those files."""
    found = re.search(r"(\d+) portraits with these settings; (\S+) holds (\d+) in all", printed(notebook, "05-09"))
    assert found, printed(notebook, "05-09")
    images = Path(found.group(2))
    files = sorted(p.name for p in images.glob("*.png") if p.name != "picks.png")
    manifest = sorted(entry["file"] for entry in json.loads((images / "manifest.json").read_text()))
    assert int(found.group(3)) == len(files) and manifest == files
    assert int(found.group(1)) == len(OVERRIDES["05_styled_portraits.ipynb"]["params"]["STYLES"]) * OVERRIDES["05_styled_portraits.ipynb"]["params"]["PER_STYLE"]


def check_06(notebook, work) -> None:
    """Exercise 1 mirrors a photo training read (metadata.jsonl), never the contact sheet; on a CPU the
    judge ranks real faces: the samples' photograph a copy, another person beyond the band, a turned
    head not judged, no face last."""
    real = printed(notebook, "06-realc")
    entries = re.split(r"\n(?=#)", real)  # one per portrait, wrapped over lines
    lines = {name: entry for entry in entries for name in ("grace_hopper", "eileen_collins", "camera_operator", "coffee")
             if name in entry.splitlines()[0]}
    assert "copies_training_photo" in lines["grace_hopper"] and "looks like someone else" in lines["eileen_collins"]
    assert "turned too far to judge" in lines["camera_operator"] and "no face found" in lines["coffee"]
    assert "Your own new photos land within" in real and max(map(len, real.splitlines())) <= 100  # wrapped at words
    # 1e: a portrait's proportions against the person's: the 30 cm re-render of the real photo reads wider
    proportions = printed(notebook, "06-propc")
    assert "Your nose:" in proportions
    photo, selfie = (float(re.search(rf"{label}: nose ([+-][\d.]+)%", proportions).group(1))
                     for label in ("the photo", "re-rendered from 30.5 cm"))
    assert selfie > photo + 5, proportions
    said = printed(notebook, "06-ex1c")
    name = said.split(" and its mirror image")[0]
    trained = {row["file_name"] for row in map(json.loads, (work / "dataset" / "metadata.jsonl").read_text().splitlines())}
    assert name in trained, said


CHECKS = {"04_train_lora.ipynb": check_04, "05_styled_portraits.ipynb": check_05, "06_final_picks.ipynb": check_06}


@pytest.mark.parametrize("name", sorted(path.name for path in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_top_to_bottom(name, kernel_env, tmp_path, tmp_path_factory):
    for earlier in CHAIN[:CHAIN.index(name)] if name in CHAIN else []:
        if earlier not in _EXECUTED:
            execute(earlier, tmp_path_factory.mktemp("before"))  # a sibling folder: "../course" is the same
    notebook = execute(name, tmp_path)
    if name in CHECKS:
        CHECKS[name](notebook, tmp_path.parent / "course")


def test_run_all_of_03_before_any_upload_stops_with_one_sentence(kernel_env, tmp_path):
    """Outside Colab with UPLOAD = True, Run All shows the upload panel and runs on: the prep cell
    must stop with the fix in one sentence, not a traceback, and no stale photo count."""
    notebook = nbformat.read(NOTEBOOKS / "03_prepare_photos.ipynb", as_version=4)
    with_overrides(notebook, {"WORK_DIR": str(tmp_path / "course"), "UPLOAD": True})
    from nbclient.exceptions import CellExecutionError

    client = NotebookClient(notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError):  # Run All stops at the first error, as nbclient does
        client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    said = [output["text"] for output in outputs if output["output_type"] == "stream" and output["name"] == "stderr"]
    assert not [output for output in outputs if output["output_type"] == "error"]  # no traceback
    assert len(said) == 1 and said[0].startswith("portraitkit: No photos found in") and len(said[0].strip().splitlines()) == 1
    assert "USE_SAMPLES = True" in said[0]  # what to do next, for a learner without photos too
    printed = "".join(output.get("text", "") for output in outputs if output["output_type"] == "stream")
    assert "0 photos in" not in printed  # the upload panel's own line says it, and updates
