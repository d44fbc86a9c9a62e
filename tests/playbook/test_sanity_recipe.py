"""The sanity fit recipe (issue 13, item 8): its checks fail for a model that does not learn or whose schedule
drifted, and pass for the numbers measured here. The real run is part of the smoke playbook (CI main job)."""

from __future__ import annotations

import pytest

from playbook import expect as ex
from playbook.model import SCALES
from playbook.recipes import get_recipe, select
from playbook.sanity import MIN_DROP_BPB, UPDATES

MEASURED_UNTRAINED, MEASURED_TRAINED = 8.935, 5.706  # python -m playbook run --task sanity (2-core CI box)


def _step(recipe, step_id):
    return next(s for s in recipe.steps if s.id == step_id)


def _failed(step, result, steps) -> list[str]:
    return [e.path for e in step.expect if not ex.check(e, result, steps).ok]


@pytest.mark.parametrize("scale", SCALES)
def test_it_runs_after_phase_1_and_before_phase_2_in_updates_not_seconds(scale):
    ids = [r.id for r in select(scale=scale)]
    assert ids.index("12") + 1 == ids.index("sanity") == ids.index("A") - 1
    assert [r.id for r in select(phase=1, scale=scale)][-1] == "sanity"
    r = get_recipe("sanity", scale)
    assert _step(r, "job").args == {"steps": UPDATES} and 200 <= UPDATES <= 1000
    assert _step(r, "untrained_job").args == {"steps": 1}
    assert set(_step(r, "job").fetch["include"]) >= {"plan", "evals", "result", "last_step"}


def test_a_model_that_does_not_learn_fails_and_the_measured_one_passes():
    step = _step(get_recipe("sanity"), "eval")
    steps = {"untrained": {"bits_per_byte": MEASURED_UNTRAINED}}
    assert _failed(step, {"bits_per_byte": MEASURED_TRAINED}, steps) == []
    assert _failed(step, {"bits_per_byte": MEASURED_UNTRAINED - 0.3}, steps) == ["bits_per_byte"]  # barely moved
    assert _failed(step, {"bits_per_byte": float("nan")}, steps) == ["bits_per_byte"]
    # the margin leaves room: a slower-learning machine up to MIN_DROP_BPB still passes
    assert MEASURED_UNTRAINED - MEASURED_TRAINED > MIN_DROP_BPB + 1.0


def _job(**over):
    view = {"status": "completed", "plan": {"total_updates": UPDATES, "scheduler_horizon": UPDATES},
            "result": {"updates_done": UPDATES}, "last_step": {"update": UPDATES, "lr": 5e-3 / 25 / 1e4},
            "evals": [{"update": 100, "val_bpb": 6.6}, {"update": 300, "val_bpb": 5.73}]}
    for key, value in over.items():
        view[key] = {**view[key], **value} if isinstance(value, dict) else value
    return view


def test_scheduler_drift_or_a_stalled_curve_fails_the_job_step():
    r = get_recipe("sanity")
    step, steps = _step(r, "job"), {"cfg": {"config": {"train": {"lr": 5e-3}}}}
    assert _failed(step, _job(), steps) == []
    drift = _job(plan={"scheduler_horizon": 400}, last_step={"lr": 1e-4})  # horizon longer than the run
    assert _failed(step, drift, steps) == ["plan.scheduler_horizon", "last_step.lr"]
    stalled = _job(evals=[{"update": 100, "val_bpb": 6.6}, {"update": 300, "val_bpb": 6.7}])
    assert _failed(step, stalled, steps) == ["evals[-1].val_bpb"]
