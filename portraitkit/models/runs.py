"""A training run's folder as the stages after `train` read it: its record (config.json, written
before the first step), the person's words the LoRA answers to, and the run's name, which its
kohya file carries so that A1111 and ComfyUI list several people's LoRAs side by side.

A run folder may hold a sub-folder with another LoRA of the same run (`best/`): it belongs to the
run whose config.json sits one level up.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from portraitkit.core.errors import PortraitkitError
from portraitkit.core.files import read_json, read_jsonl

RECORD = "config.json"


def read_run(run_dir: Path) -> dict:
    """The run's config.json, or a clear error for a folder that is not a finished run."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        raise PortraitkitError(f"{run_dir} is not a training run (it has no config.json): pass the --out folder of `portraitkit train`")
    return read_json(path, "restore it from a copy, or train the run again", keys=("settings", "base"))


def run_of(folder: Path) -> Path | None:
    """The run folder a LoRA folder belongs to: itself, or its parent for `best/`; None for a
    folder outside any run."""
    folder = Path(folder)
    return next((run for run in (folder, folder.parent) if (run / RECORD).is_file()), None)


# The run folder the demo and the class write inside each person's folder (demo/run, class/ada/run).
GENERIC_RUN = "run"


def run_name(folder: Path) -> str:
    """The name a LoRA in `folder` goes by: the run folder's name (`alice`), `alice-best` for
    the LoRA in its best/. A run folder called `run` (the demo's, each class learner's) goes by
    the folder it sits in (`ada`), so that several people's files never share one name."""
    folder = Path(folder).resolve()
    run = run_of(folder) or folder
    name = run.parent.name if run.name == GENERIC_RUN and run.parent.name else run.name
    return name if run == folder else f"{name}-{folder.name}"


CAPTION_WORDS = re.compile(r"\bphoto of (?:an? )?(\S+) (\w+)")


def person_words(run: dict, token: str | None = None, class_word: str | None = None) -> tuple[str, str]:
    """The token and class word the LoRA was trained with.

    Given ones win. Otherwise they come from the run's dataset: the values prep recorded in its
    report.json, else the words after "photo of" shared by every caption in metadata.jsonl.
    """
    if token and class_word:
        return token, class_word
    dataset = Path(run["settings"]["dataset_dir"])
    if not dataset.is_dir():
        raise PortraitkitError(f"the run's dataset {dataset} is not there (moved or deleted?), so the person's token and class word "
                               "are unknown: pass them with --token and --class-word, as given to `portraitkit prep`")
    found = _words_from_report(dataset / "report.json") or _words_from_captions(dataset / "metadata.jsonl")
    if found is None:
        raise PortraitkitError(
            f"could not tell the person's token and class word from the run's dataset ({dataset}): "
            "pass them with --token and --class-word, as given to `portraitkit prep` (e.g. --token sks --class-word person)"
        )
    return token or found[0], class_word or found[1]


def _words_from_report(path: Path) -> tuple[str, str] | None:
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    for section in (report, report.get("summary"), report.get("config"), report.get("settings")):
        if isinstance(section, dict) and section.get("token") and section.get("class_word"):
            return str(section["token"]), str(section["class_word"])
    return None


def _words_from_captions(path: Path) -> tuple[str, str] | None:
    if not path.is_file():
        return None
    found = {match.groups() for row in read_jsonl(path) if (match := CAPTION_WORDS.search(str(row.get("text", ""))))}
    return found.pop() if len(found) == 1 else None  # several answers: better to ask than to guess


def captions(run: dict) -> list[str]:
    """The training captions of the run's dataset ([] when it is gone)."""
    path = Path(run["settings"]["dataset_dir"]) / "metadata.jsonl"
    return [str(row.get("text", "")) for row in read_jsonl(path)] if path.is_file() else []
