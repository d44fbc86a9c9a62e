"""Two real server processes on one workspace (issue 23): patches never lose each other, concurrent train calls
give one running and one queued job, both servers list both, the queue moves on with no server connected, a
queued job can be cancelled, and a killed worker does not wedge the queue."""

from __future__ import annotations

import json
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import stdio_client

from .conftest import TINY, call
from .test_detached import _alive, _params, one_shot

pytestmark = pytest.mark.anyio

POLLS = 1200  # job.json polls of 0.25 s: a bound on iterations, never a timing assertion


async def _tiny_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    await one_shot(ws, "patch_config", {"patch": TINY})
    return ws


async def _two_servers(ws: Path, stack: AsyncExitStack) -> tuple[Client, Client]:
    errlog = stack.enter_context(open(ws.parent / "servers.log", "a"))  # noqa: SIM115 - closed by the stack
    a = await stack.enter_async_context(Client(stdio_client(_params(ws), errlog=errlog)))
    b = await stack.enter_async_context(Client(stdio_client(_params(ws), errlog=errlog)))
    return a, b


async def _both(first, second) -> tuple[dict, dict]:
    """Run two calls at once (each on its own server)."""
    out: dict[int, dict] = {}

    async def run(i, coro) -> None:
        out[i] = await coro

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, 0, first)
        tg.start_soon(run, 1, second)
    return out[0], out[1]


def _record(ws: Path, job_id: str) -> dict:
    return json.loads((ws / "jobs" / job_id / "job.json").read_text())


async def _until_terminal(ws: Path, job_id: str) -> dict:
    for _ in range(POLLS):
        rec = _record(ws, job_id)
        if rec["status"] in ("completed", "cancelled", "gated", "failed", "interrupted"):
            return rec
        await anyio.sleep(0.25)
    raise AssertionError(f"{job_id} did not end: {_record(ws, job_id)}")


async def _until_update(client: Client, job_id: str, at_least: int) -> dict:
    for _ in range(POLLS):
        view = await call(client, "get_job", {"job_id": job_id, "wait_s": 0.25})
        if view["progress"]["update"] >= at_least or not view["active"]:
            return view
    raise AssertionError(f"{job_id} never reached update {at_least}")


async def test_two_servers_share_config_queue_and_jobs(tmp_path):
    ws = await _tiny_workspace(tmp_path)
    async with AsyncExitStack() as stack:
        a, b = await _two_servers(ws, stack)
        for i in range(4):  # each round: both servers read-modify-write config.json at the same moment
            await _both(call(a, "patch_config", {"patch": {"train": {"seed": 100 + i}}}),
                        call(b, "patch_config", {"patch": {"train": {"weight_decay": 0.001 * (i + 1)}}}))
        for c in (a, b):
            train = (await call(c, "get_config", {"derived": False}))["config"]["train"]
            assert train["seed"] == 103 and train["weight_decay"] == pytest.approx(0.004), train

        first, second = await _both(call(a, "train", {"steps": 12}), call(b, "train", {"steps": 6}))
        assert first["job_id"] != second["job_id"]
        running, queued = sorted((first, second), key=lambda v: v["status"] == "queued")
        assert running["status"] in ("starting", "running") and queued["status"] == "queued", (first, second)
        assert queued["queue_position"] == 1
        for c in (a, b):
            listed = await call(c, "list_jobs", {})
            assert {j["job_id"] for j in listed["jobs"]} == {running["job_id"], queued["job_id"]}
            assert listed["queued"] == [queued["job_id"]] and listed["active_job"] == running["job_id"]
            view = await call(c, "get_job", {"job_id": queued["job_id"]})
            assert view["status"] == "queued", view
    # Both servers are gone: the first job's worker settles itself and starts the queued one.
    done = await _until_terminal(ws, running["job_id"])
    assert done["status"] == "completed", done.get("reason")
    later = await _until_terminal(ws, queued["job_id"])
    assert later["status"] == "completed", later.get("reason")
    queued_steps = 12 if queued["job_id"] == first["job_id"] else 6  # whichever server won the lock runs first
    assert later["last_step"]["update"] == queued_steps and later["started_at"] >= done["finished_at"]
    assert later["cpu_s"] and later["cpu_s"] > 0  # from the worker's exit.json
    state = json.loads((ws / "state.json").read_text())
    assert state["current_checkpoint"] == later["checkpoint"]  # the worker made its model current


async def test_cancel_a_queued_job_from_the_other_server(tmp_path):
    ws = await _tiny_workspace(tmp_path)
    async with AsyncExitStack() as stack:
        a, b = await _two_servers(ws, stack)
        running = await call(a, "train", {"steps": 5000})
        queued = await call(b, "train", {"steps": 5})
        assert queued["status"] == "queued" and queued["job_id"] != running["job_id"]
        refused = await b.call_tool("train", {"steps": 5, "queue": False})
        assert refused.is_error and running["job_id"] in refused.content[0].text
        view = await call(a, "cancel_job", {"job_id": queued["job_id"], "wait_s": 0})  # a queued job: at once
        assert view["status"] == "cancelled" and not view["active"] and "queued" in view["reason"], view
        listed = await call(b, "list_jobs", {})
        assert listed.get("queued") is None and listed["active_job"] == running["job_id"]
        await _until_update(b, running["job_id"], 1)
        stopped = await call(b, "cancel_job", {"job_id": running["job_id"], "wait_s": 60})
        assert stopped["status"] == "cancelled", stopped
    rec = _record(ws, queued["job_id"])
    assert rec["status"] == "cancelled" and rec.get("started_at") is None and rec.get("pid") is None
    assert (ws / "jobs" / queued["job_id"] / "metrics.jsonl").read_text() == ""  # it never ran
    assert sorted(p.name for p in (ws / "jobs").iterdir()) == sorted([running["job_id"], queued["job_id"]])


async def test_a_killed_worker_does_not_wedge_the_queue(tmp_path):
    ws = await _tiny_workspace(tmp_path)
    running = await one_shot(ws, "train", {"steps": 5000})
    queued = await one_shot(ws, "train", {"steps": 3})
    assert queued["status"] == "queued"
    pid = _record(ws, running["job_id"])["pid"]
    os.kill(pid, signal.SIGKILL)  # no server is connected to see it die, and it writes nothing
    for _ in range(200):
        if not _alive(pid):
            break
        await anyio.sleep(0.05)
    listed = await one_shot(ws, "list_jobs", {})  # the next server notices the dead worker and moves the queue on
    status = {j["job_id"]: j["status"] for j in listed["jobs"]}
    assert status[running["job_id"]] == "interrupted", listed
    assert status[queued["job_id"]] in ("starting", "running", "completed"), listed
    later = await _until_terminal(ws, queued["job_id"])
    assert later["status"] == "completed", later.get("reason")
