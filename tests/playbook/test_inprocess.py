"""Recipes through the real MCP server in-process (the official client): checks pass, a broken optimization fails
exactly its check, and Task C's precondition refuses with its reason."""

from __future__ import annotations

import io
import json

import anyio
import pytest

from playbook.recipes import get_recipe, select
from playbook.report import exit_code
from playbook.runner import Runner

pytest.importorskip("mcp_server.app")


def run_inprocess(workspace, recipes, **kw):
    from mcp.client import Client

    from mcp_server.app import build_server

    log = io.StringIO()

    async def go():
        async with Client(build_server(workspace)) as client:
            return await Runner(client, log=log, poll_s=2.0, job_timeout_s=300, **kw).run(recipes)

    report = anyio.run(go)
    return report, log.getvalue()


def until(recipe, last_step: str):
    """The recipe's steps up to and including ``last_step`` (skips the slow tail where the test does not need it)."""
    ids = [s.id for s in recipe.steps]
    recipe.steps = recipe.steps[: ids.index(last_step) + 1]
    return recipe


def test_attention_checks_pass_through_the_server(tmp_path):
    report, log = run_inprocess(tmp_path / "ws", select(task=["9", "11", "12"]))
    assert report.ok, log
    checks = {(r.id, c.step, c.path): c.measured for r in report.recipes for c in r.checks}
    assert checks[("9", "probe", "layers[*].is_causal")] == [True, True]
    assert max(checks[("11", "causal", "layers[*].edge_max_abs_diff")]) < 1e-4
    assert checks[("12", "default", "telemetry_returns_maps")] is False


def test_a_broken_mask_cache_fails_exactly_task_10(tmp_path, monkeypatch):
    """Deliberately break task 10's optimization (masks rebuilt on every forward, as before the cache) in the
    server process: its check must fail, and only its check."""
    from bit_transformer.attention import MaskCache

    def rebuild_every_time(self, key, build):
        self.misses += 1
        return build()

    monkeypatch.setattr(MaskCache, "get", rebuild_every_time)
    recipes = select(task=["9", "10", "11", "12"])
    until(recipes[1], "probe")  # the probe runs in this process; the training tail would run in a worker
    report, log = run_inprocess(tmp_path / "ws", recipes)
    status = {r.id: r.status for r in report.recipes}
    assert status == {"9": "passed", "10": "failed", "11": "passed", "12": "passed"}, log
    failed = [(c.step, c.path) for c in report.recipes[1].checks if not c.ok]
    assert failed == [("probe", "mask_cache_reused"), ("probe", "mask_cache_second_pass.misses"),
                      ("probe", "mask_cache_second_pass.hits")]
    assert exit_code(report) == 1


def c_preconditions(**patch_changes):
    """Task C (smoke) up to its precondition steps, with the 'plan' config patch changed."""
    recipe = until(get_recipe("C", "smoke"), "data")
    plan = next(s for s in recipe.steps if s.id == "plan")
    for section, values in patch_changes.items():
        plan.args["patch"][section].update(values)
    return recipe


def test_task_c_precondition_holds_at_smoke_scale(tmp_path):
    report, log = run_inprocess(tmp_path / "ws", [c_preconditions()])
    assert report.ok, log
    data = {c.path: c for c in report.recipes[0].checks if c.step == "data"}
    ratio = next(c for p, c in data.items() if "train_bytes /" in p)
    assert ratio.measured > ratio.expected > 1.5  # C's data grew more than its parameters (~2x) vs Task A


@pytest.mark.parametrize(("change", "step", "words"), [
    ({"train": {"steps": 5000}}, "data", "passes over the training data planned by this run"),
    ({"data": {"max_bytes": 32768}}, "data", "training text grew at least as much as the parameter count"),
    ({"train": {"lr": 3e-3}}, "plan", "fix: lower train.lr"),
])
def test_task_c_refuses_and_says_why(tmp_path, change, step, words):
    report, log = run_inprocess(tmp_path / "ws", [c_preconditions(**change)])
    r = report.recipes[0]
    assert r.status == "refused", log
    assert words in r.reason and r.reason.startswith("precondition not met")
    assert [s.id for s in r.steps if s.status == "refused"] == [step]
    assert exit_code(report) == 3


def test_task_c_override_runs_it_anyway(tmp_path):
    report, _ = run_inprocess(tmp_path / "ws", [c_preconditions(train={"steps": 5000})], overrides={"C"})
    r = report.recipes[0]
    assert r.status == "passed" and r.override == "--override on the command line"
    assert exit_code(report) == 0


def test_served_to_agents_via_tools_prompts_and_resources(tmp_path):
    from mcp.client import Client

    from mcp_server.app import build_server

    async def go():
        async with Client(build_server(tmp_path / "ws")) as c:
            listed = (await c.call_tool("playbook_list", {"detail": True})).structured_content
            step = (await c.call_tool("playbook_step", {"task_id": "c", "scale": "full",
                                                         "detail": True})).structured_content
            bad = await c.call_tool("playbook_step", {"task_id": "Z"})
            prompts = {p.name for p in (await c.list_prompts()).prompts}
            task6 = await c.get_prompt("playbook_task_6", {"scale": "smoke"})
            resource = await c.read_resource("bt://playbook/full/A")
            return listed, step, bad, prompts, task6, resource

    listed, step, bad, prompts, task6, resource = anyio.run(go)
    assert [r["id"] for r in listed["recipes"]] == [str(i) for i in range(1, 13)] + ["sanity", "A", "B", "C"]
    assert listed["recipes"][-1]["preconditions"]
    recipe = step["recipe"]
    assert recipe["id"] == "C" and recipe["scale"] == "full"
    assert [s["id"] for s in recipe["steps"] if s["precondition"]] == ["plan", "data"]
    assert bad.is_error and "tasks are 1, 2" in bad.content[0].text
    assert {"run_playbook", "playbook_phase_1", "playbook_phase_2", "playbook_task_1", "playbook_task_C"} <= prompts
    text = task6.messages[0].content.text
    assert "history[update=2].compress_prob" in text and "get_job" in text
    served = json.loads(resource.contents[0].text)
    assert served["id"] == "A" and served["steps"][1]["args"]["patch"]["model"]["layers"] == 8
