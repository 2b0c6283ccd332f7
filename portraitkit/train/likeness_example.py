"""The likeness curve's worked example: what a run's curve looks like when its renders show faces.

A toy base draws noise, so on a CPU a learner's own curve is empty. This example was measured on
real photos of one person (the calibration set of docs/judge.md; the photos are not shipped, only
the numbers): no LoRA was trained, each validated step's eight "renders" are real photos standing
in for what a LoRA draws as it learns, scored by validation's own code
(`benchmarks/worked_example.py` made `assets/likeness_worked_example.json` and says how).
"""

from __future__ import annotations

import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "likeness_worked_example.json"


def load() -> dict:
    """The example's identity.json record, with its `worked_example` provenance."""
    return json.loads(EXAMPLE.read_text(encoding="utf-8"))


def figure(record: dict | None = None):
    """The example drawn exactly as a run's likeness.png is."""
    from portraitkit.train.run_folder import likeness_figure

    return likeness_figure(record or load(), title="Worked example: real photos standing in for renders")


def lines(record: dict | None = None) -> list[str]:
    """One entry a step (wrapped at words, as pick's lines are): what stood in for its renders, and
    what validation made of them; then what it was measured on."""
    import textwrap

    from portraitkit.pick.report import WIDTH

    record = record or load()
    script = record["worked_example"]["script"]
    said = []
    for row in record["steps"]:
        verdict = ("kept as best/" if row["step"] == record["best_step"]
                   else f"not kept: {row['copies']} of {row['renders']} give a training photo back" if row["copies"]
                   else "not kept")
        said.append(textwrap.fill(f"step {row['step']} ({script[str(row['step'])]}): likeness {row['likeness']:.2f}, "
                                  f"{row['in_band']} of {row['scored']} judged faces in the band; {verdict}",
                                  WIDTH, subsequent_indent="    "))
    return said + [textwrap.fill("Measured on " + record["worked_example"]["data"], WIDTH, subsequent_indent="    ")]
