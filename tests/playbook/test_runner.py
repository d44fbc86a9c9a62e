"""The runner's control flow against a scripted fake server: jobs, failures, refusals, overrides, the report."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from playbook.model import ResolvedRecipe
from playbook.report import RunReport, exit_code, table
from playbook.runner import Runner
from playbook.steps import E, call, patch, train


class FakeClient:
    """Answers tool calls from a script: name -> list of results (dict) or errors (str), consumed in order."""

    def __init__(self, script: dict[str, list[Any]], tools: set[str] | None = None):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[tuple[str, dict]] = []
        self.tools = tools or set(script) | {"get_job", "cancel_job"}

    async def list_tools(self):
        return SimpleNamespace(tools=[SimpleNamespace(name=n) for n in sorted(self.tools)])

    async def call_tool(self, name, args, read_timeout_seconds=None, progress_callback=None):
        self.calls.append((name, dict(args)))
        if progress_callback is not None:
            await progress_callback(1.0, 2.0, f"{name} working")
        answer = self.script[name].pop(0)
        if isinstance(answer, str):
            return SimpleNamespace(is_error=True, content=[SimpleNamespace(text=answer)], structured_content=None)
        return SimpleNamespace(is_error=False, content=[SimpleNamespace(text=json.dumps(answer))],
                               structured_content=answer)


def recipe(steps, rid="T", override=None) -> ResolvedRecipe:
    return ResolvedRecipe(id=rid, phase=1, title="test", why="test", steps=steps, scale="smoke", order=0,
                          override=override)


def run(client, recipes, **kw) -> tuple[RunReport, str]:
    log = io.StringIO()
    runner = Runner(client, log=log, poll_s=0.01, **kw)
    report = anyio.run(runner.run, recipes)
    return report, log.getvalue()


JOB_START = {"job_id": "job-0001", "status": "starting", "active": True, "plan": None}
RUNNING = {"job_id": "job-0001", "status": "running", "active": True, "progress": {"update": 1, "total_updates": 2}}
DONE = {"job_id": "job-0001", "status": "completed", "active": False, "plan": {"total_updates": 2},
        "result": {"updates_done": 2}, "progress": {"update": 2, "total_updates": 2, "last_loss": 0.5}}


def test_train_step_polls_get_job_until_the_job_ends():
    client = FakeClient({"patch_config": [{"config": {"train": {"batch_size": 8}}}], "train": [JOB_START],
                         "get_job": [RUNNING, RUNNING, DONE, DONE]})
    steps = [patch("cfg", {"batch_size": 8}),
             train(steps=2, expect=[E("status", "==", "completed"),
                                    E("result.updates_done", "==", "$.plan.total_updates"),
                                    E("plan.total_updates", "==", "=$steps.cfg.config.train.batch_size / 4")])]
    report, log = run(client, [recipe(steps)])
    assert report.ok and exit_code(report) == 0
    assert [c[0] for c in client.calls] == ["patch_config", "train", "get_job", "get_job", "get_job", "get_job"]
    assert client.calls[0][1]["include_config"] is True  # a later check reads $steps.cfg.config
    assert client.calls[1][1] == {"steps": 2, "wait_s": 0}  # train returns at once; the runner polls
    assert client.calls[2][1] == {"job_id": "job-0001", "wait_s": 0.01}  # compact polls
    # then one call for exactly the detail the checks read
    assert client.calls[5][1] == {"job_id": "job-0001", "include": ["plan", "result"]}
    assert report.recipes[0].calls == 6 and report.recipes[0].result_bytes > 0
    assert report.recipes[0].steps[1].job_id == "job-0001"
    assert "job-0001 completed update 2/2 loss 0.5" in log
    assert log.count("working") + log.count("running update") == 1  # progress lines are throttled


def test_failed_expectation_fails_the_recipe_but_later_steps_still_run():
    client = FakeClient({"get_config": [{"a": 1}, {"a": 2}]})
    steps = [call("one", "get_config", expect=[E("a", "==", 5, key=True)]),
             call("two", "get_config", expect=[E("a", "==", 2)])]
    report, log = run(client, [recipe(steps)])
    r = report.recipes[0]
    assert r.status == "failed" and [s.status for s in r.steps] == ["failed", "ok"]
    assert r.reason == "a = 1, expected == 5"
    assert exit_code(report) == 1
    assert "FAILED: a = 1, expected == 5" in log
    text = table(report)
    assert "FAIL" in text and "!! one: a ==" in text and "| 1 " in text


def test_tool_error_stops_the_recipe_and_the_next_recipe_still_runs():
    client = FakeClient({"get_config": ["patch_config: invalid patch, nothing was changed", {"a": 1}]})
    first = recipe([call("x", "get_config"), call("y", "get_config")], rid="X")
    second = recipe([call("z", "get_config", expect=[E("a", "==", 1)])], rid="Y")
    report, _ = run(client, [first, second])
    assert [r.status for r in report.recipes] == ["error", "passed"]
    assert report.recipes[0].steps[1].status == "skipped"
    assert "invalid patch" in report.recipes[0].reason


def test_unknown_tool_is_an_error_naming_the_tools():
    client = FakeClient({"get_config": []})
    report, _ = run(client, [recipe([call("x", "inspect_attention")])])
    assert report.recipes[0].status == "error"
    assert "no tool 'inspect_attention'" in report.recipes[0].reason


def _precondition_recipe(override=None) -> ResolvedRecipe:
    return recipe([patch("plan", {"lr": 1}, precondition=True,
                         expect=[E("config.train.lr", "<=", 0.5, fix="lower train.lr")]),
                   call("after", "get_config", expect=[E("ok", "==", True)])], rid="C", override=override)


def test_failed_precondition_refuses_and_says_why():
    client = FakeClient({"patch_config": [{"config": {"train": {"lr": 1}}}], "get_config": [{"ok": True}]})
    report, _log = run(client, [_precondition_recipe()])
    r = report.recipes[0]
    assert r.status == "refused" and exit_code(report) == 3
    assert r.reason == "precondition not met: config.train.lr = 1, expected <= 0.5 (fix: lower train.lr)"
    assert [c[0] for c in client.calls] == ["patch_config"]  # nothing after the refusal ran
    assert r.steps[1].status == "skipped"
    assert "REFUSED" in table(report) and "?? plan: config.train.lr <=" in table(report)


@pytest.mark.parametrize("how", ["recipe", "command line"])
def test_override_runs_the_recipe_anyway(how):
    client = FakeClient({"patch_config": [{"config": {"train": {"lr": 1}}}], "get_config": [{"ok": True}]})
    r_over = "smoke scale" if how == "recipe" else None
    report, _ = run(client, [_precondition_recipe(r_over)], overrides={"c"} if how == "command line" else None)
    r = report.recipes[0]
    assert r.status == "passed" and r.override and r.steps[0].status == "overridden"
    assert exit_code(report) == 0 and "PASS*" in table(report)


def test_expected_error_step():
    client = FakeClient({"train": ["job job-0001 is running; one training job at a time"]})
    step = train("second")
    step.expect_error = "one training job at a time"
    report, _ = run(client, [recipe([step])])
    assert report.ok


def test_job_timeout_cancels_the_job():
    hung = {**RUNNING, "status": "cancelling"}
    client = FakeClient({"train": [JOB_START], "get_job": [RUNNING] * 50,
                         "cancel_job": [hung, {"status": "cancelled", "active": False}]})
    report, _ = run(client, [recipe([train()])], job_timeout_s=0.0001)
    r = report.recipes[0]
    assert r.status == "error" and "did not finish" in r.reason
    # a worker that ignores the cancel request is killed, so the next job can start
    assert client.calls[-2:] == [("cancel_job", {"job_id": "job-0001", "wait_s": 30}),
                                 ("cancel_job", {"job_id": "job-0001", "wait_s": 15, "force": True})]


def test_report_round_trips_as_json(tmp_path):
    client = FakeClient({"get_config": [{"a": [1.5, 2.5]}]})
    report, _ = run(client, [recipe([call("x", "get_config", expect=[E("a[*]", ">", 1, each=True, key=True)])])])
    path = report.write(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["ok"] is True and data["counts"]["passed"] == 1
    assert data["recipes"][0]["steps"][0]["checks"][0]["measured"] == [1.5, 2.5]
    assert RunReport.model_validate(data).recipes[0].checks[0].ok
