"""Playbook runs as jobs: ``python -m playbook run`` in a detached process, on a scratch workspace of its own.

Why a subprocess and not the runner in this server: the dependency direction is ``playbook -> (MCP) ->
mcp_server``; the playbook's runner is an MCP client of a server, so it runs as the CLI does, against a fresh
server (``python -m mcp_server``) on ``<workspace>/playbook/<id>/workspace``. The user's config, current
checkpoint and jobs are never touched, and a run outlives the client (and this server) like a training job.

Everything goes through the run's folder ``<workspace>/playbook/<id>/``:

- ``run.json``: the ``PlaybookRun`` record (what was asked, the process, the status once it ended);
- ``report.json``: the CLI's report, rewritten before each recipe (``complete`` once it finished);
- ``run.log``: the CLI's output (its table, progress lines); ``workspace/``: the scratch workspace and
  its server log.

Status is read when asked (get_job): the process (pid and start time, so a reused pid is never taken for it)
and the report. Cancel: SIGTERM to the CLI's process group; its server sees stdin close and, started with
``BT_JOBS_FOLLOW_SESSION=1``, stops its training job with a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .jobs import _start_time
from .workspace import Workspace, atomic_write_json, read_json

log = logging.getLogger(__name__)

PREFIX = "playbook-"  # run ids: playbook-0001 (training jobs are job-NNNN)
RunStatus = Literal["running", "completed", "cancelled", "failed"]
FOLLOW_SESSION = "BT_JOBS_FOLLOW_SESSION"  # the scratch server's jobs stop when it exits (app.build_server)


def owns(job_id: str | None) -> bool:
    """``job_id`` names a playbook run (the seam get_job / cancel_job dispatch on)."""
    return bool(job_id) and str(job_id).startswith(PREFIX)


class PlaybookRun(BaseModel):
    """``playbook/<id>/run.json``."""

    job_id: str
    target: str = Field(description="What runs: 'phase 1' or 'task 6'.")
    tasks: list[str] = Field(description="Task ids in order.")
    scale: Literal["smoke", "full"]
    status: RunStatus = "running"
    reason: str | None = None
    created_at: float
    finished_at: float | None = None
    pid: int | None = None
    pid_start: int | None = None
    cancel_requested: bool = False
    exit_code: int | None = None


class PlaybookRuns:
    """Starts, watches and cancels playbook runs of one workspace (one at a time)."""

    def __init__(self, ws: Workspace, *, python: str | None = None):
        self.ws = ws
        self.root = ws.root / "playbook"
        self.python = python or sys.executable
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()

    # ---- where -------------------------------------------------------------------------------------
    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def rel(self, job_id: str, name: str = "") -> str:
        """Workspace-relative path of the run's folder (or a file in it), as results show it."""
        return self.ws.rel(self.dir(job_id) / name) if name else self.ws.rel(self.dir(job_id))

    # ---- registry ----------------------------------------------------------------------------------
    def get(self, job_id: str) -> PlaybookRun | None:
        path = self.dir(job_id) / "run.json"
        if not owns(job_id) or "/" in job_id or not path.is_file():
            return None
        try:
            return self.refresh(PlaybookRun.model_validate(read_json(path)))
        except (OSError, ValueError) as err:
            log.warning("playbook run %s: unreadable run.json (%s)", job_id, err)
            return None

    def all(self) -> list[PlaybookRun]:
        runs = [self.get(d.name) for d in self.ws.entries(self.root, what="playbook run", files=("run.json",))]
        return sorted((r for r in runs if r is not None), key=lambda r: r.created_at)

    def active(self) -> PlaybookRun | None:
        return next((r for r in self.all() if r.status == "running"), None)

    def _new_id(self) -> str:
        n = 1 + max((int(d.name[len(PREFIX):]) for d in (self.root.iterdir() if self.root.is_dir() else ())
                     if owns(d.name) and d.name[len(PREFIX):].isdigit()), default=0)
        return f"{PREFIX}{n:04d}"

    # ---- start -------------------------------------------------------------------------------------
    def start(self, *, tasks: list[str], target: str, scale: str, phase: int | None) -> PlaybookRun:
        """Spawn ``python -m playbook run`` on a fresh scratch workspace; raises RuntimeError while one runs."""
        with self._lock:
            busy = self.active()
            if busy is not None:
                raise RuntimeError(busy.job_id)
            job_id = self._new_id()
            d = self.dir(job_id)
            d.mkdir(parents=True)
            run = PlaybookRun(job_id=job_id, target=target, tasks=tasks, scale=scale, created_at=time.time())
            which = ["--phase", str(phase)] if phase is not None else [a for t in tasks for a in ("--task", t)]
            cmd = [self.python, "-m", "playbook", "run", *which, "--scale", scale, "--workspace",
                   str(d / "workspace"), "--report", str(d / "report.json")]
            env = {**os.environ, "PYTHONUNBUFFERED": "1", FOLLOW_SESSION: "1"}
            with open(d / "run.log", "ab") as out:
                # Detached like a training worker: its own session, no pipe to this server.
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True, cwd=str(d))
            self._procs[job_id] = proc
            run.pid, run.pid_start = proc.pid, _start_time(proc.pid)
            self._save(run)
            return run

    # ---- status ------------------------------------------------------------------------------------
    def report(self, job_id: str) -> dict[str, Any] | None:
        """The CLI's report so far (None before its first write)."""
        try:
            data = read_json(self.dir(job_id) / "report.json")
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _alive(self, run: PlaybookRun) -> bool:
        proc = self._procs.get(run.job_id)
        if proc is not None:
            return proc.poll() is None
        if not run.pid:
            return False
        try:
            cmd = Path(f"/proc/{run.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return (b"playbook" in cmd and run.job_id.encode() in cmd and run.pid_start is not None
                and _start_time(run.pid) == run.pid_start)

    def refresh(self, run: PlaybookRun) -> PlaybookRun:
        """Fold the process's end into the record (once): completed when the report is complete."""
        if run.status != "running" or self._alive(run):
            return run
        proc = self._procs.pop(run.job_id, None)
        run.exit_code = proc.returncode if proc is not None else None
        report = self.report(run.job_id)
        if report is not None and report.get("complete"):
            run.status, run.reason = "completed", None
        elif run.cancel_requested:
            run.status, run.reason = "cancelled", "cancel_job stopped it; the report holds the recipes run before"
        else:
            tail = _tail(self.dir(run.job_id) / "run.log")
            run.status = "failed"
            run.reason = (f"the playbook process ended without a complete report (exit code {run.exit_code}); "
                          f"{self.rel(run.job_id, 'run.log')} ends: {tail}")
        run.finished_at = time.time()
        self._save(run)
        return run

    def cancel(self, run: PlaybookRun) -> None:
        run.cancel_requested = True
        self._save(run)
        if self._alive(run) and run.pid:
            with contextlib.suppress(OSError):
                os.killpg(run.pid, signal.SIGTERM)

    def _save(self, run: PlaybookRun) -> None:
        atomic_write_json(self.dir(run.job_id) / "run.json", run.model_dump(mode="json"))


def _tail(path: Path, n: int = 300) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return "(no log)"
