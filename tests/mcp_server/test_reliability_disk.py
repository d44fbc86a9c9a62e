"""A disk that fills up between checkpoints (issue 13, item 6): a real, small tmpfs and a real worker.

The workspace lives on its own tmpfs; once the job is training, a filler file takes every free byte.
The worker's next appends (metrics, log) fail with ENOSPC: the job must end 'failed' with a reason that
says the disk is full, the server's monitor must survive its own failed writes of job.json, and the
record on disk must be finalised as soon as space is freed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from mcp.client import Client

from .conftest import TINY, call, new_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root / CAP_SYS_ADMIN): {proc.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(path: Path) -> None:
    """Take every free byte of the filesystem holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    chunk = b"\0" * (1 << 16)
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    try:
        while True:  # the last partial chunk
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    os.close(fd)


def _on_disk(ws: Path, job_id: str) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((ws / "jobs" / job_id / "job.json").read_text())
    return {}


async def test_a_full_disk_between_checkpoints_fails_the_job_with_a_reason_and_finalises_later(small_disk):
    ws = small_disk / "ws"
    patch = {**TINY, "train": {**TINY["train"], "eval_every": 10_000, "save_every": 5, "lr": 1e-3}}
    async with Client(new_server(ws)) as c:
        await call(c, "patch_config", {"patch": patch})
        job_id = (await call(c, "train", {"steps": 100_000}))["job_id"]
        for _ in range(600):  # until a checkpoint exists and training is under way
            view = await call(c, "get_job", {"job_id": job_id, "wait_s": 0.5})
            if view.get("checkpoint") and (view.get("progress") or {}).get("update", 0) >= 7:
                break
        assert view["active"], view.get("reason")
        filler = small_disk / "filler.bin"
        _fill(filler)
        view = await call(c, "get_job", {"job_id": job_id, "wait_s": 120})
        assert view["status"] == "failed"
        reason = view["reason"]
        assert "disk is full" in reason and "no space left on device" in reason, reason
        assert f"jobs/{job_id}" in reason and "train(resume=true)" in reason
        assert str(small_disk) not in reason  # agents see workspace names, never host paths
        # The record could not be written while the disk was full; the monitor is still alive, retrying.
        monitors = [t for t in threading.enumerate() if t.name == f"monitor-{job_id}"]
        stale = _on_disk(ws, job_id).get("status")
        if stale != "failed":
            assert monitors and monitors[0].is_alive(), "the monitor thread died with the record unwritten"
        filler.unlink()
        deadline = time.monotonic() + 90
        while _on_disk(ws, job_id).get("status") != "failed" and time.monotonic() < deadline:
            time.sleep(0.5)
        record = _on_disk(ws, job_id)
        assert record.get("status") == "failed" and "disk is full" in record["reason"]
        # and a restarted server keeps that verdict instead of 'interrupted'
    async with Client(new_server(ws)) as c:
        again = await call(c, "get_job", {"job_id": job_id})
        assert again["status"] == "failed" and "disk is full" in again["reason"]
