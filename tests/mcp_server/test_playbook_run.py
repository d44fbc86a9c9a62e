"""playbook_run: the server runs recipes itself (``python -m playbook run`` on a scratch workspace) as a job that
get_job polls and cancel_job stops, and the user's config, current checkpoint and jobs stay exactly as they were."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mcp.client import Client

from mcp_server.budget import RESULT_BUDGET, compact, result_bytes

from .conftest import call, error_text, new_server

pytestmark = pytest.mark.anyio


def user_state(ws: Path) -> tuple[bytes, str | None, list[str]]:
    """What a playbook run must not change: config.json, the current checkpoint, the job folders."""
    state = json.loads((ws / "state.json").read_text())
    return (ws / "config.json").read_bytes(), state.get("current_checkpoint"), sorted(p.name for p in
                                                                                       (ws / "jobs").iterdir())


async def run_to_end(c, args: dict, limit_s: float = 900) -> tuple[dict, dict, int]:
    """One playbook_run call, then get_job polls until it ends: (first view, last view, polls)."""
    first = await call(c, "playbook_run", args)
    view, polls, t0 = first, 0, time.monotonic()
    while view["active"] and time.monotonic() - t0 < limit_s:
        res = await c.call_tool("get_job", {"job_id": first["job_id"], "wait_s": 50})
        assert result_bytes(res) <= RESULT_BUDGET, compact(res.structured_content)
        view, polls = res.structured_content, polls + 1
    return first, view, polls


async def test_one_recipe_runs_on_a_scratch_workspace_and_leaves_the_users_work_alone(trained_ws):
    before = user_state(trained_ws)
    assert before[1]  # the trained workspace has a current checkpoint to protect
    async with Client(new_server(trained_ws)) as c:
        first, done, _ = await run_to_end(c, {"task_id": "12"})
        detail = await call(c, "get_job", {"job_id": first["job_id"], "include": ["result"]})
        listed = await call(c, "list_jobs", {})
        again = error_text(await c.call_tool("cancel_job", {"job_id": first["job_id"]}))
    job_id = first["job_id"]
    assert job_id == "playbook-0001"
    # Said up front: where it runs and that the user's work is untouched.
    assert f"playbook/{job_id}/workspace" in first["where"] and "untouched" in first["where"]
    assert list(first)[:4] == ["job_id", "status", "active", "where"]
    assert done["status"] == "completed" and done["summary"] == "1/1 recipes passed"
    assert done["progress"] == {"done": 1, "total": 1, "passed": 1}
    assert done["table"][0].startswith("12 PASS 6/6 ")
    assert "  default: full_attn_logging_resolved == false (ok)" in done["table"]
    assert len(compact(done).encode()) <= RESULT_BUDGET
    # Detail on request: every check with expected and measured values.
    assert len(detail["table"]) == 1 + 6 and detail["summary"] == "1/1 recipes passed"
    # The artefacts are where the result says, and the user's config, checkpoint and jobs are as before.
    report = json.loads((trained_ws / done["report"]).read_text())
    assert report["complete"] and report["ok"] and report["workspace"].endswith(f"playbook/{job_id}/workspace")
    assert (trained_ws / "playbook" / job_id / "workspace" / "config.json").is_file()
    assert user_state(trained_ws) == before
    assert [j["job_id"] for j in listed["jobs"]][-1] == job_id and "playbook task 12" in listed["jobs"][-1]["reason"]
    assert "already ended (completed)" in again


async def test_arguments_are_checked_and_one_run_at_a_time(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        neither = error_text(await c.call_tool("playbook_run", {}))
        both = error_text(await c.call_tool("playbook_run", {"task_id": "1", "phase": 1}))
        unknown = error_text(await c.call_tool("playbook_run", {"task_id": "99"}))
        first = await call(c, "playbook_run", {"phase": 1})
        busy = error_text(await c.call_tool("playbook_run", {"task_id": "12"}))
        cancelled = await call(c, "cancel_job", {"job_id": first["job_id"], "wait_s": 30})
    assert "give task_id" in neither and "give task_id" in both
    assert "unknown playbook task '99'" in unknown and "'12'" in unknown
    assert first["runs"] == "phase 1, 13 recipe(s) at smoke scale" and first["progress"]["total"] == 13
    assert f"playbook run {first['job_id']} is still running" in busy
    assert cancelled["status"] == "cancelled" and not cancelled["active"], cancelled
    pid = json.loads((tiny_ws / "playbook" / first["job_id"] / "run.json").read_text())["pid"]
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.slow
async def test_phase_1_through_one_call_passes_13_of_13_and_displaces_nothing(trained_ws):
    before = user_state(trained_ws)
    async with Client(new_server(trained_ws)) as c:
        _, done, polls = await run_to_end(c, {"phase": 1})
    assert done["status"] == "completed", done
    assert done["summary"].startswith("13/13 recipes passed") and done["progress"]["passed"] == 13, done["table"]
    rows = [line for line in done["table"] if not line.startswith(" ")]
    assert len(rows) == 13 and all(" PASS " in r for r in rows), rows
    assert len(compact(done).encode()) <= RESULT_BUDGET
    assert polls >= 1 and user_state(trained_ws) == before
