"""train(processes=N): the job runs under torchrun; cancel, force-cancel and resume work across ranks."""

from __future__ import annotations

import json
import os

import anyio
import pytest
from mcp.client import Client

from mcp_server.lifecycle import _children, worker_command

from .conftest import call, error_text, new_server

pytestmark = pytest.mark.anyio


def _workers(launcher_pid: int) -> list[int]:
    return [p for p in _children(launcher_pid) if os.path.exists(f"/proc/{p}")]


def _launcher(ws, job_id: str) -> int:
    """torchrun's pid: the parent of rank 0, whose pid the job records (its 'started' event)."""
    rank0 = json.loads((ws / "jobs" / job_id / "job.json").read_text())["pid"]
    return int(open(f"/proc/{rank0}/stat").read().rsplit(")", 1)[1].split()[1])


async def _until_update(c, job_id: str, update: int) -> dict:
    for _ in range(300):
        job = await call(c, "get_job", {"job_id": job_id, "wait_s": 1})
        if job["progress"]["update"] >= update or not job["active"]:
            return job
    raise AssertionError(f"{job_id} never reached update {update}")


def test_worker_command_uses_torchrun_only_for_several_processes(tmp_path):
    assert worker_command("py", tmp_path, 1) == ["py", "-m", "mcp_server.worker", str(tmp_path)]
    cmd = worker_command("py", tmp_path, 2)
    assert cmd[:3] == ["py", "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    assert cmd[-3:] == ["-m", "mcp_server.worker", str(tmp_path)]


async def test_two_process_job_cancels_with_a_checkpoint_and_resumes_in_one(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        started = await call(c, "train", {"steps": 4000, "processes": 2})
        job_id = started["job_id"]
        await _until_update(c, job_id, 2)
        job = await call(c, "get_job", {"job_id": job_id, "include": ["plan", "request"]})
        assert job["status"] == "running" and job["plan"]["world_size"] == 2
        assert job["plan"]["distributed"] == "ddp" and job["request"]["processes"] == 2
        launcher = _launcher(tiny_ws, job_id)
        assert len(_workers(launcher)) == 2, "torchrun should run one worker per process"

        # 'cancel' reaches one rank through the shared stdin; every rank stops at the same update.
        job = await call(c, "cancel_job", {"job_id": job_id, "wait_s": 60})
        assert job["status"] == "cancelled", job.get("reason")
        stopped_at = job["progress"]["update"]
        assert job["checkpoint"] and job["checkpoint"].endswith(f"update-{stopped_at:07d}")
        updates = [json.loads(line)["data"]["update"] for line in
                   (tiny_ws / "jobs" / job_id / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line)["event"] == "step"]
        assert updates == list(range(1, stopped_at + 1))  # rank 0 alone reports

        resumed = await call(c, "train", {"resume": True, "steps": stopped_at + 2, "wait_s": 90})
        assert resumed["status"] == "completed", resumed.get("reason")
        resumed = await call(c, "get_job", {"job_id": resumed["job_id"], "include": ["plan"]})
        assert resumed["plan"]["start_update"] == stopped_at and resumed["plan"]["world_size"] == 1
        assert "2 process(es)" in resumed["plan"]["resume_note"]
        assert resumed["progress"]["update"] == stopped_at + 2


async def test_force_cancel_kills_every_rank(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        started = await call(c, "train", {"steps": 4000, "processes": 2})
        job_id = started["job_id"]
        await _until_update(c, job_id, 1)
        launcher = _launcher(tiny_ws, job_id)
        ranks = _workers(launcher)
        assert len(ranks) == 2
        await call(c, "cancel_job", {"job_id": job_id, "force": True, "wait_s": 10})
        for _ in range(50):  # ranks lead their own sessions: the launcher's death alone would orphan them
            if not any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in ranks):
                break
            await anyio.sleep(0.1)
        assert not any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in ranks)


async def test_a_rank_that_dies_fails_the_job_at_once_and_keeps_the_checkpoint(tiny_ws):
    """E.g. the out-of-memory killer takes rank 1: rank 0's next collective errors; nothing hangs."""
    import signal
    import time

    async with Client(new_server(tiny_ws)) as c:
        started = await call(c, "train", {"steps": 4000, "processes": 2})
        job_id = started["job_id"]
        await _until_update(c, job_id, 4)  # save_every=3: a checkpoint exists
        rank0 = json.loads((tiny_ws / "jobs" / job_id / "job.json").read_text())["pid"]
        other = next(p for p in _workers(_launcher(tiny_ws, job_id)) if p != rank0)
        t0 = time.monotonic()
        os.kill(other, signal.SIGKILL)
        job = await call(c, "get_job", {"job_id": job_id, "wait_s": 60})
        assert time.monotonic() - t0 < 30
    assert job["status"] == "failed"
    assert "another training process stopped" in job["reason"] and "Resume continues from" in job["reason"]
    assert job["checkpoint"] and job["checkpoint"].rsplit("/", 1)[-1] in job["reason"]
    assert str(tiny_ws) not in job["reason"]  # agents see workspace names, never host paths


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


async def test_more_processes_than_cores_is_refused_with_the_fix(tiny_ws):
    n = (os.cpu_count() or 1) + 1
    async with Client(new_server(tiny_ws)) as c:
        msg = error_text(await c.call_tool("train", {"steps": 2, "processes": n}))
    assert f"processes={n}" in msg and f"processes<={n - 1}" in msg
