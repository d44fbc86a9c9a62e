"""The expectation engine: paths, references, expressions, comparisons."""

from __future__ import annotations

import math

import pytest

from playbook.expect import ExprError, PathError, check, compare, evaluate, lookup, resolve_ref, value_of
from playbook.model import Expect

JOB = {
    "status": "completed",
    "plan": {"total_updates": 12, "steps_per_epoch": 5, "precision": "bf16", "warmup_updates": 4},
    "history": [{"update": i, "lr": 1.0 / i, "compress_prob": min(0.5, 0.1 * i)} for i in range(1, 6)],
    "evals": [{"gate": {"triggered": False}}, {"gate": {"triggered": False}}, {"gate": {"triggered": True}}],
    "layers": [{"is_causal": True, "diff": 0.0}, {"is_causal": True, "diff": 2e-6}],
    "loss": "nan",
    "none": None,
}
STEPS = {"cfg": {"derived": {"train_windows": 41}, "config": {"train": {"batch_size": 8, "lr": 0.003}}}}


def test_lookup_paths():
    assert lookup(JOB, "plan.total_updates") == 12
    assert lookup(JOB, "history[0].update") == 1
    assert lookup(JOB, "history[-1].update") == 5
    assert lookup(JOB, "layers[*].is_causal") == [True, True]
    assert lookup(JOB, "evals[0:2].gate.triggered") == [False, False]
    assert lookup(JOB, "history[update=3].lr") == pytest.approx(1 / 3)
    assert lookup(JOB, "none") is None


@pytest.mark.parametrize(("path", "message"), [
    ("plan.nope", "no field 'nope' in plan (fields: precision, steps_per_epoch"),
    ("history[9]", "has 5 items; index [9] is out of range"),
    ("history[update=99]", "no item of history has update == 99"),
    ("status.x", "status is \"completed\", not an object"),
    ("plan[0]", "plan is not a list"),
])
def test_lookup_errors_name_the_problem(path, message):
    with pytest.raises(PathError) as info:
        lookup(JOB, path)
    assert message in str(info.value)


def test_references():
    assert resolve_ref("$steps.cfg.derived.train_windows", JOB, STEPS) == 41
    assert resolve_ref("$.plan.steps_per_epoch", JOB, STEPS) == 5
    with pytest.raises(PathError, match="no earlier step 'job'"):
        resolve_ref("$steps.job.plan", JOB, STEPS)


def test_expressions():
    assert evaluate("=ceil($steps.cfg.derived.train_windows / $steps.cfg.config.train.batch_size)", JOB, STEPS) == 6
    assert evaluate("=2 * $.plan.steps_per_epoch + 1", JOB, STEPS) == 11
    assert evaluate("=0.5 * (1 - cos(pi * 2 / $.plan.warmup_updates)) / 2", JOB, STEPS) == pytest.approx(0.25)
    assert evaluate("=len($.history)", JOB, STEPS) == 5
    assert evaluate("=max(1, 0.02 * $.plan.total_updates)", JOB, STEPS) == 1
    assert evaluate("=$.plan.total_updates > 10 and $.plan.precision == 'bf16'", JOB, STEPS) is True


@pytest.mark.parametrize("expr", [
    "=__import__('os').system('true')", "=$.plan.__class__", "=(lambda: 1)()", "=open('x')",
    "=[x for x in (1, 2)]", "=unknown + 1",
])
def test_expressions_refuse_anything_but_arithmetic(expr):
    with pytest.raises((ExprError, PathError)):
        evaluate(expr, JOB, STEPS)


def test_expression_errors_are_reported():
    with pytest.raises(ExprError, match="division by zero"):
        evaluate("=1 / 0", JOB, STEPS)
    with pytest.raises(ExprError, match="bad expression"):
        evaluate("=1 +", JOB, STEPS)


def test_value_of_literal_reference_expression():
    assert value_of("bf16", JOB, STEPS) == "bf16"
    assert value_of("$.plan.total_updates", JOB, STEPS) == 12
    assert value_of("=1 + 1", JOB, STEPS) == 2
    assert value_of(["$.plan.total_updates", 3], JOB, STEPS) == [12, 3]


@pytest.mark.parametrize(("op", "actual", "expected", "tol", "ok"), [
    ("==", 6, 6.0, None, True), ("==", True, 1, None, False), ("==", "bf16", "bf16", None, True),
    ("!=", 100, 7, None, True), ("<", 1e-5, 1e-4, None, True), ("<", None, 1, None, False),
    ("<=", "nan", 1.0, None, False), (">=", 3, 3, None, True), (">", 0, 0, None, False),
    ("~=", 1.2e-8, 1.2000001e-8, 1e-3, True), ("~=", 0.0732, 0.125, 1e-6, False), ("~=", 0.1, 0.1 + 1e-9, None, True),
    ("in", True, [True, False], None, True), ("in", 1, [True], None, False), ("not in", "x", ["a"], None, True),
    ("contains", "safety gate: loss", "safety gate", None, True), ("contains", [1, 2], 2, None, True),
    ("matches", "compiled attn+ff", r"^(compiled|skipped: .+)", None, True),
    ("matches", "not requested", r"^(compiled|skipped: .+)", None, False),
    ("exists", None, None, None, True), ("is null", None, None, None, True), ("not null", 0, None, None, True),
    ("finite", 0.5, None, None, True), ("finite", "nan", None, None, False), ("finite", "inf", None, None, False),
    ("nondecreasing", [0, 0.1, 0.1, 0.5], None, None, True), ("nondecreasing", [0, 0.2, 0.1], None, None, False),
    ("nonincreasing", [3, 2, 2], None, None, True), ("nondecreasing", [1], None, None, False),
    ("len ==", [1, 2, 3], 3, None, True), ("len >=", [1], 2, None, False),
])
def test_compare(op, actual, expected, tol, ok):
    assert compare(op, actual, expected, tol)[0] is ok


def test_check_reports_measured_and_expected():
    out = check(Expect(path="plan.total_updates", op="==", value="=2 * $.plan.steps_per_epoch + 2"), JOB, STEPS)
    assert out.ok and out.measured == 12 and out.expected == 12
    bad = check(Expect(path="plan.total_updates", op="==", value=100), JOB, STEPS)
    assert not bad.ok and bad.detail == "plan.total_updates = 12, expected == 100"
    missing = check(Expect(path="plan.horizon", op="==", value=1), JOB, STEPS)
    assert not missing.ok and missing.measured == "missing" and "no field 'horizon'" in missing.detail


def test_check_each_and_expression_paths():
    assert check(Expect(path="layers[*].diff", op="<", value=1e-4, each=True), JOB, STEPS).ok
    out = check(Expect(path="evals[*].gate.triggered", op="==", value=False, each=True), JOB, STEPS)
    assert not out.ok and "item 2 = true" in out.detail
    assert not check(Expect(path="plan", op="==", value=1, each=True), JOB, STEPS).ok  # not a list
    ratio = check(Expect(path="=$.plan.total_updates / $.plan.steps_per_epoch", op="<=", value=2.4), JOB, STEPS)
    assert ratio.ok and math.isclose(ratio.measured, 2.4)
    assert not check(Expect(path="loss", op="finite"), JOB, STEPS).ok
