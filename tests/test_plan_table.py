"""The planner's shipped traces (`plan/table.py`): the presets' common plans answer without a
trace, the table equals a fresh trace under the installed torch and diffusers, and any other base
or setting is still traced."""

from __future__ import annotations

import pytest

from portraitkit.plan import tracing
from portraitkit.plan.estimate import plan_run
from portraitkit.plan.table import common_plans


CACHED = (tracing.component_parameters, tracing.training_step, tracing.text_encoder_step, tracing.trace_pass,
          tracing.transformer_training_step, tracing.linear_parameters)


@pytest.fixture
def traces(monkeypatch):
    """Empty trace caches and a record of every trace that runs (a table hit records nothing)."""
    for function in CACHED:
        function.cache_clear()
    monkeypatch.setattr(tracing, "recorded", {})
    yield tracing
    for function in CACHED:  # what the test traced stays out of the other tests' caches
        function.cache_clear()


def test_the_common_plans_of_the_presets_answer_without_tracing(traces):
    on_gpus = [settings for settings in common_plans() if settings["gpu"] != "cpu"]  # a CPU's RAM differs by machine
    assert {settings["base"] for settings in on_gpus} == {"sd15", "sdxl", "klein4b"}
    for settings in on_gpus:
        plan_run(**settings)
    assert traces.recorded == {}, f"traced although shipped: {list(traces.recorded)[:3]}"


# SDXL with its text encoders trained: its UNet's step is the default plan's, and each encoder's step
# is traced too (a table built before SDXL's first encoder lost its unused last layer held the old one)
@pytest.mark.parametrize("base, settings", [("sd15", {}), ("sdxl", {"train_text_encoder": True}), ("klein4b", {})])
def test_the_shipped_table_equals_a_fresh_trace(traces, monkeypatch, base, settings):
    # a T4's plan (for SDXL the ~20 s trace the table saves), traced afresh; without the advice's
    # search, whose other settings are entries of the same kind
    monkeypatch.setattr(tracing, "use_shipped", False)
    fresh = plan_run(base, gpu="t4", advise=False, **settings)
    assert traces.recorded  # it did trace
    shipped = tracing.shipped_table()
    assert {name: shipped.get(name) for name in traces.recorded} == traces.recorded
    for function in CACHED:
        function.cache_clear()
    monkeypatch.setattr(tracing, "use_shipped", True)
    assert plan_run(base, gpu="t4", advise=False, **settings).to_dict() == fresh.to_dict()  # the table, unpacked: the same plan


def test_other_bases_and_settings_are_still_traced(traces):
    plan_run("tiny-sd", gpu="t4", advise=False)
    assert any('"training_step"' in name for name in traces.recorded)
    traces.recorded.clear()
    sd15 = tracing.arch_key(tracing.architecture("sd15"))
    step = tracing.training_step(sd15, 256, 1, 5, True, 2, True)  # SD1.5 at a setting no one's default
    assert list(traces.recorded) == [tracing.table_key("training_step", sd15, (256, 1, 5, True, 2, True, False))]
    assert step["peak"] > 0 and sum(step["lora_numels"]) == 5 * 797_184 // 4  # FACTS.md: 797,184 per rank 4
