"""Jobs outlive the server that started them: separate stdio server processes, as one-shot clients make them.

Server 1 starts a job and exits; the worker keeps training; server 2 re-attaches (status, progress, the event
log) and sees it complete; a job started by one server is cancelled, with a checkpoint, through another.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

from .conftest import TINY, call

pytestmark = pytest.mark.anyio


def _params(ws: Path, *extra: str) -> StdioServerParameters:
    env = {**os.environ, "BT_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("BT_JOBS_FOLLOW_SESSION", None)
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--workspace", str(ws),
                                                               "--log-level", "WARNING", *extra], env=env)


async def one_shot(ws: Path, tool: str, args: dict, *extra: str) -> dict:
    """One server process for one tool call, like `npx @modelcontextprotocol/inspector --cli ...`."""
    with open(ws.parent / "servers.log", "a") as errlog:
        async with Client(stdio_client(_params(ws, *extra), errlog=errlog)) as c:
            return await call(c, tool, args)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_a_job_survives_its_server_and_the_next_one_reattaches(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    await one_shot(ws, "patch_config", {"patch": TINY})
    started = await one_shot(ws, "train", {"steps": 30})  # server 1 exits right after answering
    assert started["status"] in ("starting", "running")
    pid = json.loads((ws / "jobs" / started["job_id"] / "job.json").read_text())["pid"]
    await anyio.sleep(0.5)
    assert _alive(pid), "the worker died with the server that started it"
    view = await one_shot(ws, "get_job", {})  # server 2: re-attached, not 'interrupted'
    assert view["job_id"] == started["job_id"] and view["status"] in ("starting", "running", "completed"), view
    deadline = time.monotonic() + 300
    while view["active"] and time.monotonic() < deadline:
        view = await one_shot(ws, "get_job", {"wait_s": 20})  # each poll is its own server process
    assert view["status"] == "completed", view.get("reason")
    assert view["progress"]["update"] == 30 and view["checkpoint"] == f"{started['job_id']}/update-0000030"
    steps = [json.loads(ln) for ln in (ws / "jobs" / started["job_id"] / "metrics.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "step" for e in steps) == 30  # one event log, written by the worker itself
    assert not (ws / "runs" / started["job_id"] / "metrics.jsonl").exists()  # and no second copy under runs/
    listed = await one_shot(ws, "list_checkpoints", {})
    assert listed["current"] == view["checkpoint"]  # the re-attached server finalised the job


async def test_cancel_works_across_a_server_restart(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    await one_shot(ws, "patch_config", {"patch": TINY})
    started = await one_shot(ws, "train", {"steps": 5000})
    job_id = started["job_id"]
    pid = json.loads((ws / "jobs" / job_id / "job.json").read_text())["pid"]
    deadline = time.monotonic() + 120
    view = started
    while view["progress"]["update"] < 1 and time.monotonic() < deadline:
        view = await one_shot(ws, "get_job", {"wait_s": 2})
    assert view["status"] == "running", view
    view = await one_shot(ws, "cancel_job", {"wait_s": 60})  # another server than the one that started it
    assert view["status"] == "cancelled", view.get("reason")
    assert view["checkpoint"] and view["checkpoint"].startswith(f"{job_id}/update-")
    for _ in range(50):
        if not _alive(pid):
            break
        await anyio.sleep(0.1)
    assert not _alive(pid)


async def test_follow_session_keeps_the_old_behaviour(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    await one_shot(ws, "patch_config", {"patch": TINY})
    started = await one_shot(ws, "train", {"steps": 5000}, "--jobs-follow-session")
    view = await one_shot(ws, "get_job", {"wait_s": 30})
    # the job stopped with its server (stdin EOF = cancel), whichever server wrote the final record
    assert view["job_id"] == started["job_id"] and view["status"] in ("interrupted", "cancelled"), view
    assert not view["active"] and view["progress"]["update"] < 5000
