"""Managing what training leaves behind: list_exports, delete (with its refusals), resume by name, and
workspace-relative paths in every result."""

from __future__ import annotations

import json

import pytest
from mcp.client import Client

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio
FINAL = f"job-0001/update-{TRAIN_STEPS:07d}"


async def test_exports_are_listed_and_deleted(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["delete"].annotations.destructive_hint is True
        assert tools["list_exports"].annotations.read_only_hint is True
        assert (await call(c, "list_exports"))["exports"] == []
        await call(c, "export_int8", {"name": "a", "eval_bytes": 0})
        await call(c, "export_int8", {"name": "b", "eval_bytes": 0})
        listed = await call(c, "list_exports")
        assert [e["name"] for e in listed["exports"]] == ["a", "b"] and listed["total"] == 2
        assert listed["exports"][0]["path"] == "exports/a" and listed["exports"][0]["checkpoint"] == FINAL
        assert listed["exports"][0]["size_bytes"] > 0
        dry = await call(c, "delete", {"export": "a", "dry_run": True})
        assert dry["deleted"] == ["exports/a"] and dry["freed_bytes"] == listed["exports"][0]["size_bytes"]
        assert (trained_ws / "exports" / "a").is_dir()  # dry run
        gone = await call(c, "delete", {"export": "a"})
        assert gone["deleted"] == ["exports/a"] and not (trained_ws / "exports" / "a").exists()
        assert [e["name"] for e in (await call(c, "list_exports"))["exports"]] == ["b"]
        assert "does not exist" in error_text(await c.call_tool("delete", {"export": "a"}))
        assert "exactly one" in error_text(await c.call_tool("delete", {}))
        assert "not allowed" in error_text(await c.call_tool("delete", {"export": "../runs"}))


async def test_delete_refuses_the_current_model_and_repoints_latest(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        msg = error_text(await c.call_tool("delete", {"checkpoint": FINAL}))
        assert "current model" in msg and "load_checkpoint" in msg
        assert "current model" in error_text(await c.call_tool("delete", {"run": "job-0001"}))
        await call(c, "load_checkpoint", {"name": "job-0001/update-0000003"})
        # FINAL is now neither current nor the next run's start: it may go, and 'latest' moves to what is left.
        out = await call(c, "delete", {"checkpoint": FINAL})
        assert out["deleted"] == [FINAL] and out["freed_bytes"] > 0
        names = [ck["name"] for ck in (await call(c, "list_checkpoints"))["checkpoints"]]
        assert FINAL not in names and "job-0001/update-0000003" in names
        latest = (trained_ws / "runs" / "job-0001" / "checkpoints" / "latest").read_text().strip()
        assert f"job-0001/{latest}" in names
        assert (await call(c, "load_checkpoint", {"name": "latest"}))["name"] == f"job-0001/{latest}"


async def test_delete_refuses_an_active_jobs_run_and_resume_takes_a_job_id(trained_ws, tmp_path):
    server = new_server(trained_ws)
    fake = tmp_path / "sleepy.sh"  # a worker that just waits: the job stays active
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    server.app_state.jobs.python = str(fake)
    async with Client(server) as c:
        job = await call(c, "train", {"resume": "job-0001", "steps": TRAIN_STEPS + 2})
        assert job["run"] == "job-0001" and job["active"]
        detail = await call(c, "get_job", {"job_id": job["job_id"], "include": ["request"]})
        assert detail["request"]["resumes"] == "job-0001" and detail["request"]["resume"] is True
        msg = error_text(await c.call_tool("delete", {"checkpoint": "job-0001/update-0000003"}))
        assert "being trained" in msg or "is training" in msg or job["job_id"] in msg
        await call(c, "cancel_job", {"force": True, "wait_s": 10})
        msg = error_text(await c.call_tool("train", {"resume": "job-0999"}))
        assert "nothing to resume" in msg and "job-0001" in msg


async def test_results_carry_workspace_relative_paths_only(trained_ws):
    root = str(trained_ws.resolve())
    async with Client(new_server(trained_ws)) as c:
        seen = [await call(c, "get_job", {"include": ["all"], "history": 10}), await call(c, "get_config"),
                await call(c, "list_checkpoints"), await call(c, "prepare_data", {"reload": False}),
                await call(c, "export_int8", {"name": "x", "eval_bytes": 0}), await call(c, "list_exports"),
                await call(c, "list_jobs")]
    for data in seen:
        assert root not in json.dumps(data), data
