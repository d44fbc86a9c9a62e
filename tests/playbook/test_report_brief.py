"""The report as playbook_run returns it (``playbook.report.brief``): a PASS/FAIL row per recipe and its checks
with expected and measured values, within the result budget for a whole phase; and the progress reports the
runner writes while it runs (what playbook_run's get_job reads)."""

from __future__ import annotations

import json

import anyio

from mcp_server.budget import RESULT_BUDGET
from playbook import brief_report, select
from playbook.report import CheckResult, RecipeResult, RunReport, StepResult
from playbook.runner import Runner
from playbook.steps import E, call

from .test_runner import FakeClient, recipe


def phase_report(failing: set[str], measured: object = "a long measured value " * 3) -> RunReport:
    """Phase 1's real recipes and checks; the checks of ``failing`` recipes fail with ``measured``."""
    rep = RunReport(scale="smoke", server="test", started_at=0.0, planned=[r.id for r in select(phase=1)])
    for r in select(phase=1):
        bad = r.id in failing
        steps = [StepResult(id=s.id, tool=s.tool, status="failed" if bad else "ok",
                            checks=[CheckResult(step=s.id, path=e.path, op=e.op, expected=e.value,
                                                measured=measured if bad else e.value, ok=not bad, key=e.key,
                                                why=e.why, fix=e.fix) for e in s.expect])
                 for s in r.steps]
        rep.recipes.append(RecipeResult(id=r.id, phase=1, title=r.title, status="failed" if bad else "passed",
                                        reason="checks failed" if bad else None, steps=steps))
    return rep.finish(60.0)


def size(data: dict) -> int:
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())


def test_a_phase_fits_the_budget_with_every_row_and_failures_first():
    for failing in (set(), {"6"}, {"1", "2", "6", "10", "sanity"}):
        rep = phase_report(failing)
        out = brief_report(rep.model_dump(mode="json"), budget=RESULT_BUDGET - 600)
        assert size(out) <= RESULT_BUDGET - 600, (failing, size(out))
        rows = [line for line in out["table"] if not line.startswith(" ")]
        assert [r.split()[0] for r in rows] == rep.planned  # every recipe keeps its row
        assert all((" FAIL " if r.split()[0] in failing else " PASS ") in r for r in rows)
        shown = [line for line in out["table"] if line.startswith("  ")]
        if "6" in failing:  # a failed check reads: label, expected, measured
            assert any(line.startswith("  !! ") and '(got "a long measured' in line for line in shown), shown
        total = sum(len(r.checks) for r in rep.recipes)
        assert out["summary"] == f"{13 - len(failing)}/13 recipes passed"
        dropped = int(out["omitted"].split()[0]) if "omitted" in out else 0
        assert dropped + len(shown) <= total and (dropped == 0 or size(out) > RESULT_BUDGET - 800)


def test_detail_lists_every_check_and_a_partial_report_says_so():
    rep = phase_report({"6"})
    full = brief_report(rep, detail=True)
    assert len(full["table"]) == 13 + sum(len(r.checks) for r in rep.recipes)
    partial = rep.model_copy(update={"recipes": rep.recipes[:3], "complete": False})
    assert brief_report(partial)["summary"] == "3/13 recipes passed so far (3 run)"


def test_the_runner_reports_before_each_recipe():
    seen: list[tuple[str | None, int]] = []
    client = FakeClient({"evaluate": [{"bits_per_byte": 1.0}, {"bits_per_byte": 1.0}]})
    recipes = [recipe([call("ev", "evaluate", expect=[E("bits_per_byte", "<", 2)])], rid=rid) for rid in "AB"]
    runner = Runner(client, poll_s=0.01, on_report=lambda r: seen.append((r.current, len(r.recipes))),
                    log=open("/dev/null", "w"))  # noqa: SIM115
    report = anyio.run(runner.run, recipes)
    assert seen == [("A", 0), ("B", 1)] and report.planned == ["A", "B"]
    assert report.complete and report.current is None and report.ok
