"""The shipped traces: which settings of SD1.5, SDXL and FLUX.2 [klein] 4B are traced ahead, and their rebuild.

`plan`, `train` and notebook 04's panel ask the planner about the same few settings again and
again, and tracing SDXL's real-size graphs on the meta device takes about 20 s on a 2-core CPU
(Colab's), klein's transformer about 5 s. So the traces that the plans of `COMMON` need ship in `assets/traced_presets.json`,
and `tracing` answers from it; any other base or setting is traced as before.

The table is what this machine's torch and diffusers trace: rebuild it after upgrading either
(`python -m portraitkit.plan.table`, several minutes); tests/test_plan_table.py fails when the
table and a fresh trace differ.
"""

from __future__ import annotations

import itertools
import sys
from importlib import resources

from portraitkit.core.files import write_json
from portraitkit.plan import tracing
from portraitkit.plan.devices import T4_TRAINING_FIGURES


def common_plans() -> list[dict]:
    """The plans people ask for, most asked first: `plan`'s and `train`'s defaults on each machine,
    then every choice of notebook 04's TrainPanel on a T4 (rank, resolution, text encoder, optimizer)."""
    plans = [dict(base=base, gpu=gpu, **extra) for extra, base, gpu in itertools.product(
        ({}, {"train_text_encoder": True}, {"dora": True}), ("sd15", "sdxl"), ("t4", "l4", "a100", "cpu"))]
    plans += [dict(base=base, rank=rank, resolution=resolution, train_text_encoder=encoder, optimizer=optimizer, gpu="t4")
              for base, rank, encoder, resolution, optimizer in itertools.product(
                  ("sd15", "sdxl"), (16, 4, 8, 32, 64), (False, True), (None, 512, 768, 1024), ("adamw8bit", "adamw"))]
    # FLUX.2 [klein] 4B: its defaults on each machine, then the panel's ranks and sizes on a T4 (the
    # text encoder is not trained for klein; the optimizer changes no trace)
    plans += [dict(base="klein4b", gpu=gpu) for gpu in ("t4", "l4", "a100", "cpu")]
    plans += [dict(base="klein4b", rank=rank, resolution=resolution, gpu="t4")
              for rank, resolution in itertools.product((16, 4, 8, 32, 64), (None, 512, 768, 1024))]
    # the published T4 training figures every GPU plan is calibrated against (devices.T4_TRAINING_FIGURES)
    plans += [dict(gpu="t4", validations=0, **figure["settings"]) for figure in T4_TRAINING_FIGURES]
    return plans


def rebuild(plans: list[dict] | None = None) -> dict:
    """Trace every plan of `common_plans` afresh and write the table into the package's assets,
    after each plan (an interrupted rebuild leaves a smaller table, never a wrong one)."""
    import importlib.metadata as metadata

    from portraitkit.plan.estimate import plan_run

    for cached in (tracing.component_parameters, tracing.training_step, tracing.text_encoder_step, tracing.trace_pass,
                   tracing.transformer_training_step, tracing.linear_parameters):
        cached.cache_clear()
    table = {
        "about": "the planner's meta-device traces of SD1.5, SDXL and FLUX.2 [klein] 4B at the settings of plan/table.py's common_plans; "
                 "rebuild with `python -m portraitkit.plan.table`",
        "versions": {package: metadata.version(package) for package in ("torch", "diffusers", "transformers", "peft")},
        "traces": {},
    }
    tracing.use_shipped, tracing.recorded = False, {}
    try:
        for done, settings in enumerate(plans or common_plans(), 1):
            plan_run(**settings)
            table["traces"] = dict(sorted(tracing.recorded.items()))
            write_json(resources.files("portraitkit") / "assets" / tracing.SHIPPED_TABLE, table)
            print(f"{done}: {settings} ({len(table['traces'])} traces)", file=sys.stderr, flush=True)
    finally:
        tracing.use_shipped, tracing.recorded = True, None
        tracing.shipped_table.cache_clear()
    return table


if __name__ == "__main__":
    written = rebuild()
    print(f"{len(written['traces'])} traces written to portraitkit/assets/{tracing.SHIPPED_TABLE}", file=sys.stderr)
