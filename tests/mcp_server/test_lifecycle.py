"""Cancellation, server shutdown/restart recovery with resume, and worker crashes that never take the server down."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from mcp.client import Client

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio

LONG = {"train": {"save_every": 1000, "eval_every": 1000}}


async def _wait_for_update(c, job_id: str, at_least: int, timeout: float = 120.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        view = await call(c, "get_job", {"job_id": job_id, "wait_s": 0.5})
        if view["progress"]["update"] >= at_least or not view["active"]:
            return view
    raise AssertionError(f"{job_id} did not reach update {at_least}")


async def test_cancel_saves_a_checkpoint_that_resume_continues(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        await call(c, "patch_config", {"patch": LONG})
        job = await call(c, "train", {"steps": 5000})
        await _wait_for_update(c, job["job_id"], 2)
        view = await call(c, "cancel_job", {"wait_s": 90})
        assert view["status"] == "cancelled", view
        update = view["progress"]["update"]
        assert 2 <= update < 5000
        assert view["checkpoint"] == f"job-0001/update-{update:07d}"
        ck_dir = tiny_ws / "runs/job-0001/checkpoints" / f"update-{update:07d}"
        meta = json.loads((ck_dir / "meta.json").read_text())
        assert meta["kind"] == "cancelled" and meta["state"]["update"] == update
        assert (ck_dir / "optimizer.safetensors").is_file()
        assert "resume" in view["next"]
        cks = await call(c, "list_checkpoints")
        assert cks["current"] == view["checkpoint"]
        assert (await call(c, "list_jobs")).get("active_job") is None  # the server kept answering
        # Resume continues the same run from the cancel checkpoint, with the run's own config.
        await call(c, "patch_config", {"patch": {"batch_size": 4}})  # later patches do not leak into the resume
        resumed = await call(c, "train", {"resume": True, "steps": update + 2, "wait_s": 120})
        while resumed["active"]:
            resumed = await call(c, "get_job", {"job_id": resumed["job_id"], "wait_s": 30})
        assert resumed["status"] == "completed", resumed
        resumed = await call(c, "get_job", {"job_id": resumed["job_id"], "include": ["request", "plan"],
                                            "history": 100})
        assert resumed["request"]["resumes"] == "job-0001" and resumed["request"]["run"] == "job-0001"
        assert resumed["plan"]["batch_size"] == 8
        assert [h["update"] for h in resumed["history"]] == [update + 1, update + 2]
        assert resumed["checkpoint"] == f"job-0001/update-{update + 2:07d}"


@pytest.mark.slow
async def test_shutdown_interrupts_and_resume_continues(tiny_ws):
    from mcp_server.app import build_server

    # Jobs tied to the session (--jobs-follow-session): the behaviour from before jobs outlived their server.
    async with Client(build_server(tiny_ws, jobs_follow_session=True)) as c:
        await call(c, "patch_config", {"patch": LONG})
        job = await call(c, "train", {"steps": 5000})
        await _wait_for_update(c, job["job_id"], 1)
    # The client closed: the lifespan stopped the job at a step boundary with a checkpoint.
    async with Client(new_server(tiny_ws)) as c:
        view = await call(c, "get_job", {"job_id": "job-0001"})
        assert view["status"] == "interrupted", view
        assert view["checkpoint"] and "resume" in view["reason"]
        done = view["progress"]["update"]
        resumed = await call(c, "train", {"resume": "job-0001", "steps": done + 2, "wait_s": 120})  # by run name
        while resumed["active"]:
            resumed = await call(c, "get_job", {"job_id": resumed["job_id"], "wait_s": 30})
        assert resumed["status"] == "completed", resumed
        resumed = await call(c, "get_job", {"job_id": resumed["job_id"], "include": ["request", "plan"],
                                            "history": 100})
        assert resumed["request"]["resumes"] == "job-0001" and resumed["request"]["run"] == "job-0001"
        assert [h["update"] for h in resumed["history"]] == [done + 1, done + 2]
        assert resumed["checkpoint"] == f"job-0001/update-{done + 2:07d}"


async def test_restart_marks_running_job_interrupted(trained_ws):
    # Simulate a server killed mid-run: job.json still says running and no 'done' event was written.
    jdir = trained_ws / "jobs/job-0001"
    rec = json.loads((jdir / "job.json").read_text())
    rec.update(status="running", finished_at=None, result=None, pid=None)
    (jdir / "job.json").write_text(json.dumps(rec))
    lines = [ln for ln in (jdir / "metrics.jsonl").read_text().splitlines() if '"done"' not in ln]
    (jdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    async with Client(new_server(trained_ws)) as c:
        view = await call(c, "get_job")
        assert view["status"] == "interrupted"
        ck = f"job-0001/update-{TRAIN_STEPS:07d}"
        assert view["checkpoint"] == ck and ck in view["reason"] and "train(resume='job-0001')" in view["reason"]
        assert "no longer running" in view["reason"]
        assert json.loads((jdir / "job.json").read_text())["status"] == "interrupted"  # persisted


async def test_a_reused_pid_is_never_taken_for_the_worker(trained_ws):
    # The recorded pid now belongs to another live process (this test): not the job's worker, never signalled.
    jdir = trained_ws / "jobs/job-0001"
    rec = json.loads((jdir / "job.json").read_text())
    rec.update(status="running", finished_at=None, result=None, pid=os.getpid(), pid_start=1)
    (jdir / "job.json").write_text(json.dumps(rec))
    lines = [ln for ln in (jdir / "metrics.jsonl").read_text().splitlines() if '"done"' not in ln]
    (jdir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    async with Client(new_server(trained_ws)) as c:  # we are still alive to check: no SIGTERM reached us
        view = await call(c, "get_job")
        assert view["status"] == "interrupted" and not view["active"]
        msg = error_text(await c.call_tool("cancel_job", {"job_id": "job-0001", "force": True}))
        assert "already ended" in msg


def _fake_python(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake_python.sh"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


async def test_worker_killed_fails_job_not_server(tiny_ws, tmp_path):
    server = new_server(tiny_ws)
    server.app_state.jobs.python = _fake_python(tmp_path, "kill -9 $$")
    async with Client(server) as c:
        view = await call(c, "train", {"steps": 3, "wait_s": 30})
        assert view["status"] == "failed"
        assert "SIGKILL" in view["reason"] and "out-of-memory" in view["reason"]
        assert (await call(c, "get_config", {"derived": False}))["config"]["model"]["d_model"] == 32


async def test_worker_error_event_becomes_the_reason(tiny_ws, tmp_path):
    server = new_server(tiny_ws)
    body = ('echo "Traceback: boom" >&2\n'
            'echo \'{"event": "error", "t": 0, "data": {"reason": "ValueError: loss is NaN"}}\' >> "$3/metrics.jsonl"\n'
            "exit 1")
    server.app_state.jobs.python = _fake_python(tmp_path, body)
    async with Client(server) as c:
        view = await call(c, "train", {"steps": 3, "wait_s": 30})
        assert view["status"] == "failed" and view["reason"] == "ValueError: loss is NaN"
        assert "log_tail" in view["next"] and "log_tail" not in view  # compact; detail on request
        view = await call(c, "get_job", {"include": ["log_tail"]})
        assert "Traceback: boom" in view["log_tail"]
        again = await call(c, "train", {"steps": 3, "wait_s": 30})  # not blocked by the failed job
        assert again["job_id"] == "job-0002"


async def test_bad_train_arguments(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        assert "one of steps, epochs or minutes" in error_text(await c.call_tool("train", {"steps": 2, "epochs": 1}))
        assert "steps" in error_text(await c.call_tool("train", {"steps": 0}))
        assert "nothing to resume" in error_text(await c.call_tool("train", {"resume": True}))
        assert "no jobs yet" in error_text(await c.call_tool("cancel_job", {}))


@pytest.mark.slow
async def test_real_worker_crash_reports_reason(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        await call(c, "patch_config", {"patch": {"data": {"source": "files", "paths": ["missing/*.txt"]}}})
        view = await call(c, "train", {"steps": 2, "wait_s": 120})
        assert view["status"] == "failed" and "matched no files" in view["reason"]
        assert "Traceback" in (await call(c, "get_job", {"include": ["log_tail"]}))["log_tail"]
