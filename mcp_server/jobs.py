"""Training jobs as one server sees them: a view of the workspace's jobs, monitor threads, cancel and shutdown.

The work runs in a child process (``python -m mcp_server.worker``): a crash, NaN, out-of-memory kill or runaway C
extension then ends that job only; the server keeps answering. Jobs are detached: a job outlives the server that
started it (a one-shot client, a host restart). The workspace is the registry, shared by every server on it
(``queue.py``: ids, the queue, settling, all under the workspace lock); this manager re-reads ``jobs/*/job.json``
when asked, so a job another server created or changed is seen here too. Everything goes through the job folder
(file names in ``lifecycle.py``), never a pipe:

- ``jobs/<id>/request.json`` (written before the start): the ``TrainRequest``, config snapshot included.
- ``jobs/<id>/cancel``: the one cancel channel; the worker stops at the next step boundary and saves a
  resumable checkpoint.
- ``jobs/<id>/metrics.jsonl`` (events, see ``events.py``), appended by the worker, tailed by a monitor thread in
  every server that sees the job running; ``worker.log`` its output; ``exit.json`` its exit code and CPU time.
- ``jobs/<id>/job.json`` (the ``JobRecord`` of ``job.py`` less the request), written under the workspace lock by
  whoever changes the job (``queue.persist`` never overwrites an ending another process stored).

A worker is recognised by its pid, start time (``/proc/<pid>/stat``) and command line (``lifecycle.is_our_worker``),
so a reused pid is never signalled. ``follow_session=True`` (``--jobs-follow-session``) keeps the old behaviour:
a job stops with a checkpoint when its server exits (stdin EOF) and is marked interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import queue
from .job import ACTIVE, TERMINAL, Job, RequestDamaged, TrainRequest, load_record
from .lifecycle import (
    RECORD_FILE,
    REQUEST_FILE,
    SHUTDOWN,
    kill_group,
    launcher,
    read_exit,
    request_cancel,
    worker_alive,
)
from .workspace import Workspace, atomic_write_json, file_stamp, read_json

log = logging.getLogger(__name__)

__all__ = ["ACTIVE", "TERMINAL", "Job", "JobBusyError", "JobManager"]


class JobBusyError(RuntimeError):
    """A training job is already active (and the caller asked not to queue)."""


class JobManager:
    """Starts, queues, watches, cancels and recovers the workspace's training jobs (one training at a time)."""

    def __init__(self, ws: Workspace, *, poll_s: float = 0.1, python: str | None = None,
                 follow_session: bool = False):
        self.ws = ws
        self.poll_s = poll_s
        self.python = python or sys.executable
        # False (default): jobs outlive this server and a later one re-attaches. True: the old behaviour, a job
        # stops (with a checkpoint) when the server that started it exits.
        self.follow_session = follow_session
        self._jobs: dict[str, Job] = {}
        self._stamps: dict[str, tuple[int, int]] = {}  # job.json (inode, mtime) last read, per job
        self._watched: set[str] = set()
        self._lock = threading.RLock()  # taken after ws.lock, never before it
        self._closing = False  # follow_session shutdown: start nothing new (it would die with this server)
        self.refresh()
        self.advance()  # a worker that died with no server watching: its job is settled and the queue moves on

    # ---- registry: the workspace's jobs ------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the jobs other processes created or changed (job.json changed); watch the running ones. Jobs
        this server watches are kept current by their monitor instead."""
        for d in queue.job_dirs(self.ws):
            with self._lock:
                job = self._jobs.get(d.name)
                if job is not None and job.id in self._watched:
                    continue
            stamp = file_stamp(d / RECORD_FILE)
            if stamp is None or (job is not None and self._stamps.get(job.id) == stamp):
                continue
            loaded = self._load(d)
            if loaded is None:
                continue
            with self._lock:
                job = self._jobs.setdefault(loaded.id, loaded)
                if job is not loaded:
                    with job.changed:  # in place: waiters hold this object
                        job.record, job.reader = loaded.record, loaded.reader
                        job.changed.notify_all()
                self._stamps[job.id] = stamp
            if job.status in queue.RUNNING:
                if worker_alive(job.record):
                    self._watch(job)
                else:  # its worker died and no server saw it end: settle it, start the next one
                    self.advance()

    def _load(self, d: Path) -> Job | None:
        try:
            try:
                record, stale = load_record(d)
            except RequestDamaged as err:
                self._rebuild_request(d, str(err))
                record, stale = load_record(d)
        except (OSError, ValueError) as err:
            log.warning("skipping unreadable job %s: %s", d.name, err)
            return None
        job = Job(d, record)
        if job.active or stale:  # history of finished jobs is replayed lazily, on first look
            job.drain()
        return job

    def _rebuild_request(self, job_dir: Path, why: str) -> None:
        """A damaged request.json must not hide the job (its status, metrics and checkpoints are intact): keep the
        file as ``request.json.bad-<ts>``, write a request with the config of the run's newest checkpoint (else
        the workspace config), and leave a notice saying so."""
        raw = read_json(job_dir / RECORD_FILE)
        if not isinstance(raw, dict):
            raise ValueError("job.json is not an object")
        run = str(raw.get("checkpoint") or "").split("/")[0] or job_dir.name
        config, source = self.ws.load_config_dict(), "the workspace config"
        ckpts = self.ws.entries(self.ws.runs_dir / run / "checkpoints", what="checkpoint", files=("meta.json",))
        for ckpt in reversed([c for c in ckpts if c.name.startswith("update-")]):
            meta = ckpt / "meta.json"
            try:
                data = read_json(meta) if meta.is_file() else None
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("config"), dict):
                config, source = data["config"], f"checkpoint {run}/{ckpt.name}"
                break
        request = TrainRequest(config=config, run=run, out_dir=str(self.ws.runs_dir / run),
                               cache_dir=str(self.ws.cache_dir))
        if (job_dir / REQUEST_FILE).exists():
            self.ws._set_aside(job_dir / REQUEST_FILE, why, f"job {job_dir.name} keeps its status and metrics; its "
                               f"config was rebuilt from {source}")
        else:
            self.ws.add_notice(f"{job_dir.name}/{REQUEST_FILE}", f"{job_dir.name}/{REQUEST_FILE} was missing; the "
                               f"job keeps its status and metrics, its config was rebuilt from {source}")
        atomic_write_json(job_dir / REQUEST_FILE, request.model_dump(mode="json"))

    def _watch(self, job: Job) -> None:
        """Tail a running job's events in a thread (once per job): status, progress, metrics here too."""
        with self._lock:
            if job.id in self._watched:
                return
            self._watched.add(job.id)
        if job.proc is None:
            log.info("job %s: watching its running worker (pid %s)", job.id, job.record.pid)
        threading.Thread(target=self._monitor, args=(job,), name=f"monitor-{job.id}", daemon=True).start()

    def _register(self, job: Job) -> Job:
        """A job this server created or started: keep our object (waiters hold it) with the new record and proc."""
        with self._lock:
            mine = self._jobs.setdefault(job.id, job)
            if mine is not job:
                with mine.changed:
                    mine.record, mine.proc = job.record, job.proc
                    mine.changed.notify_all()
            self._stamps.pop(job.id, None)
        return mine

    def get(self, job_id: str) -> Job | None:
        self.refresh()
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        self.refresh()
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: (j.record.created_at, j.id))

    def latest(self) -> Job | None:
        jobs = self.all()
        return jobs[-1] if jobs else None

    def active(self) -> Job | None:
        """The job training now (else the first queued one)."""
        live = [j for j in self.all() if j.active]
        return next((j for j in live if j.status != "queued"), live[0] if live else None)

    def queued(self) -> list[Job]:
        """Queued jobs in the order they will start."""
        return [j for j in self.all() if j.status == "queued"]

    def _persist_or_log(self, job: Job) -> bool:
        """Persist, but never raise (the monitor thread must not die): False, with a warning, on failure."""
        try:
            queue.persist(self.ws, job)
            return True
        except OSError as err:
            log.warning("job %s: could not write job.json (%s); the record is kept in memory and written "
                        "again later", job.id, err)
            return False

    # ---- start -------------------------------------------------------------------------------------
    def start(self, request: dict[str, Any] | TrainRequest, *, queue_ok: bool = True) -> Job:
        """Create a job and start its worker, or queue it behind the running job (``queue_ok``; else raise
        JobBusyError naming the active job). A dead running job is settled first."""
        req = TrainRequest.model_validate(request)  # a bad request fails here, not in the worker
        with self.ws.lock:  # one allocator and one decision across every server on this workspace
            self.advance()
            busy = queue.active_jobs(self.ws)
            if busy and not queue_ok:
                raise JobBusyError(busy[0].id)
            job = self._register(queue.create(self.ws, req, status="queued" if busy else "starting"))
            if not busy:
                try:
                    queue.start_worker(self.ws, job, self.python, follow_session=self.follow_session)
                finally:
                    self._register(job)
                self._watch(job)
        return job

    def advance(self) -> None:
        """Start the next queued job if nothing runs (settling a job whose worker died)."""
        started = queue.advance(self.ws, self.python, follow_session=self.follow_session)
        if started is not None:
            self._watch(self._register(started))

    # ---- monitor -----------------------------------------------------------------------------------
    def _monitor(self, job: Job) -> None:
        """Tail the job's events until the worker exits, then settle it and start the next queued job. Never dies
        silently: an error is logged and the loop goes on; a record that cannot be written is retried."""
        last_status, exited = job.status, False
        while not exited:
            try:
                exited = job.proc.poll() is not None if job.proc is not None else not worker_alive(job.record)
                job.drain()
                if job.status != last_status and self._persist_or_log(job):
                    last_status = job.status
                if job.status in TERMINAL:  # another process settled it (e.g. the worker itself)
                    break
            except Exception:
                log.exception("job %s: monitor error (still watching)", job.id)
            if not exited:
                time.sleep(self.poll_s)
        try:
            job.drain()
        except Exception:
            log.exception("job %s: could not read its last events", job.id)
        code, cpu = read_exit(job.dir)
        if job.proc is not None and job.proc.returncode is not None:
            code = job.proc.returncode  # we are its parent: the real code, even when it wrote no exit.json
        delay = 1.0
        while True:  # e.g. ENOSPC: write the record once space allows
            try:
                queue.settle(self.ws, job, code, cpu)
                break
            except Exception as err:
                log.warning("job %s: could not record its end (%s); retrying", job.id, err)
                time.sleep(delay)
                delay = min(30.0, delay * 2)
        if self._closing:
            return
        try:
            self.advance()
        except Exception:
            log.exception("job %s: could not start the next queued job", job.id)

    # ---- cancel / shutdown ---------------------------------------------------------------------------
    def cancel(self, job: Job, *, force: bool = False) -> None:
        """A queued job is dropped from the queue; a running one stops at the next step boundary (it saves a
        checkpoint); ``force`` kills it."""
        if job.status == "queued" and queue.cancel_queued(self.ws, job):
            return
        with job.changed:
            if not job.active:
                return
            job.record.cancel_requested = True
            job.record.status = "cancelling"
            job.changed.notify_all()
        self._persist_or_log(job)  # a full disk must not stop the cancel request reaching the worker
        pid = launcher(job.record)
        ours = worker_alive(job.record)
        if force:
            if ours:
                kill_group(pid)
            return
        if not request_cancel(job.dir) and ours:  # the worker polls for the file; else the signal
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)  # the signal handler sets the same cancel event

    def shutdown(self, timeout: float = 20.0) -> None:
        """Server exit. Default: jobs keep running (any server re-attaches; the queue moves on without one).
        With follow_session: stop this server's jobs at a step boundary (checkpoint saved); they end
        'interrupted'."""
        with self._lock:
            mine = [j for j in self._jobs.values() if j.active and j.proc is not None]
        if not self.follow_session:
            if mine:
                log.info("server exiting; jobs %s keep running (any server on this workspace re-attaches)",
                         ", ".join(j.id for j in mine))
            return
        self._closing = True
        for job in mine:
            request_cancel(job.dir, f"{SHUTDOWN}: the server exited")
        deadline = time.monotonic() + timeout
        for job in mine:
            while job.active and time.monotonic() < deadline:
                time.sleep(0.05)
            if job.active:  # stuck: the closed stdin will still stop it; record the truth now
                log.warning("job %s did not stop within %.0f s; leaving it to finish its checkpoint", job.id, timeout)
                with job.changed:
                    job.record.status, job.record.finished_at = "interrupted", time.time()
                    job.record.reason = ("the server shut down while the job was still stopping; run "
                                         "train(resume=true) to continue from its last checkpoint")
                self._persist_or_log(job)

    async def wait(self, job: Job, wait_s: float, on_progress=None, poll_s: float = 0.1) -> None:
        """Wait until the job is no longer active or ``wait_s`` passed; ``on_progress(job)`` on each change."""
        import anyio

        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            if on_progress is not None:
                await on_progress(job)
            if not job.active or time.monotonic() >= deadline:
                return
            await anyio.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
            if job.id not in self._watched:  # queued, or watched by no one here: its record is on disk
                await anyio.to_thread.run_sync(self.refresh)
