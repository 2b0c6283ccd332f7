"""The planner's shipped traces (`plan/table.py`): the presets' common plans answer without a
trace, the table equals a fresh trace under the installed torch and diffusers, and any other base
or setting is still traced."""

from __future__ import annotations

import json

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


def everything(name: str) -> bool:
    return True


def sdxls_own(name: str) -> bool:
    """SDXL's UNet step with checkpointing (a T4's default) and each text encoder's step. Its other
    entries (the step without checkpointing, the inference passes) come from the same tracing code as
    SD1.5's, traced afresh above: read from the table, they save 7 s of the 14 s a fresh SDXL plan takes."""
    kind, *_, checkpointing = json.loads(name)[:6]
    return kind == "text_encoder_step" or (kind == "training_step" and checkpointing is True)


# SDXL with its text encoders trained: a table built before SDXL's first encoder lost its unused last
# layer held the old encoder steps
@pytest.mark.parametrize("base, settings, afresh", [("sd15", {}, everything), ("sdxl", {"train_text_encoder": True}, sdxls_own),
                                                    ("klein4b", {}, everything)])
def test_the_shipped_table_equals_a_fresh_trace(traces, monkeypatch, base, settings, afresh):
    # a T4's plan, its entries (`afresh`) traced anew; without the advice's search, whose other
    # settings are entries of the same kind
    shipped = tracing.shipped_table()
    monkeypatch.setattr(tracing, "shipped_table", lambda: {name: entry for name, entry in shipped.items() if not afresh(name)})
    fresh = plan_run(base, gpu="t4", advise=False, **settings)
    assert traces.recorded and all(afresh(name) for name in traces.recorded)
    assert {name: shipped.get(name) for name in traces.recorded} == traces.recorded
    if afresh is sdxls_own:
        assert sorted(json.loads(name)[0] for name in traces.recorded) == ["text_encoder_step", "text_encoder_step", "training_step"]
    for function in CACHED:
        function.cache_clear()
    monkeypatch.setattr(tracing, "shipped_table", lambda: shipped)
    assert plan_run(base, gpu="t4", advise=False, **settings).to_dict() == fresh.to_dict()  # the table, unpacked: the same plan


def test_other_bases_and_settings_are_still_traced(traces):
    plan_run("tiny-sd", gpu="t4", advise=False)
    assert any('"training_step"' in name for name in traces.recorded)
    traces.recorded.clear()
    sd15 = tracing.arch_key(tracing.architecture("sd15"))
    step = tracing.training_step(sd15, 256, 1, 5, True, 2, True)  # SD1.5 at a setting no one's default
    assert list(traces.recorded) == [tracing.table_key("training_step", sd15, (256, 1, 5, True, 2, True, False))]
    assert step["peak"] > 0 and sum(step["lora_numels"]) == 5 * 797_184 // 4  # FACTS.md: 797,184 per rank 4
