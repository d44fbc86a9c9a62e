"""The job queue of a workspace, read and changed by any process that shares it.

The workspace, not a server's memory, is the registry: ``jobs/<id>/job.json`` says each job's status, and every
change that must not race (allocating an id, starting the next job, settling a dead one, cancelling a queued one)
happens under the workspace lock (``wslock.py``). So two servers see the same jobs and never run two trainings
at once, and the queue moves on with no server at all: a worker that ends settles its own record and starts the
next queued job (``worker.py``); a worker that was killed is noticed (its pid is gone) by the next server that
starts, the next ``train`` call, or the monitor of any server watching it.

The launch API (also for other kinds of job): ``create(ws, request, status)`` under ``ws.lock`` makes the job
folder; ``start_worker(ws, job, python, follow_session)`` launches it; ``advance(ws, python)`` starts the oldest
queued job when nothing runs; ``settle(ws, job, code, cpu_s)`` records how a job ended (``lifecycle.final_status``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from .job import ACTIVE, TERMINAL, Job, JobRecord, TrainRequest, load_record
from .lifecycle import (
    LOG_FILE,
    METRICS_FILE,
    RECORD_FILE,
    REQUEST_FILE,
    final_status,
    launch,
    log_tail,
    start_time,
    worker_alive,
)
from .workspace import Workspace, atomic_write_json

log = logging.getLogger(__name__)

RUNNING = ("starting", "running", "cancelling")  # ACTIVE less "queued": a worker exists (or should)


def job_dirs(ws: Workspace) -> list[Path]:
    """The job folders (confined walk: a folder or file that is a symlink or leads outside is skipped)."""
    return [d for d in ws.entries(ws.jobs_dir, what="job", files=(RECORD_FILE, METRICS_FILE, LOG_FILE))
            if (d / RECORD_FILE).is_file()]


def _number(job_id: str) -> int:
    tail = job_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def next_id(ws: Workspace) -> str:
    """A new job id, one past the highest folder name (the caller holds ``ws.lock``: ids are unique across
    processes)."""
    names = [p.name for p in ws.jobs_dir.iterdir()] if ws.jobs_dir.is_dir() else []
    return f"job-{1 + max((_number(n) for n in names if n.startswith('job-')), default=0):04d}"


def read_record(job_dir: Path) -> JobRecord | None:
    """The job's record as stored (None when unreadable: the caller keeps what it has)."""
    try:
        return load_record(job_dir)[0]
    except (OSError, ValueError):
        return None


def create(ws: Workspace, request: TrainRequest, *, status: str) -> Job:
    """Make ``jobs/<new id>/`` with its request and record. Call under ``ws.lock``."""
    job_id = next_id(ws)
    job_dir = ws.jobs_dir / job_id
    job_dir.mkdir(parents=True)
    run = request.run or job_id  # a fresh run is named after its first job
    req = request.model_copy(update={"run": run, "out_dir": str(ws.runs_dir / run), "cache_dir": str(ws.cache_dir)})
    atomic_write_json(job_dir / REQUEST_FILE, req.model_dump(mode="json"))  # the config's one copy
    (job_dir / METRICS_FILE).touch()
    job = Job(job_dir, JobRecord(job_id=job_id, status=status, created_at=time.time(), request=req))
    job.save()
    return job


def start_worker(ws: Workspace, job: Job, python: str, *, follow_session: bool) -> None:
    """Launch ``job``'s worker and record its pid (under ``ws.lock``, so no process ever sees a started job
    without its pid). Raises OSError (the job is then recorded as failed)."""
    ws.drop_links(ws.cache_dir, what="cache")  # the worker writes there: no links out
    rec = job.record
    try:
        job.proc = launch(python, job.dir, rec.request.processes, follow_session=follow_session)
    except OSError as err:
        rec.status, rec.reason = "failed", f"could not start the worker process: {err}"
        rec.finished_at = time.time()
        job.save()
        raise
    with job.changed:
        rec.status = "starting"
        rec.pid = rec.launcher_pid = job.proc.pid  # "pid" becomes rank 0's when it reports
        rec.pid_start = start_time(job.proc.pid)  # with the pid: a reused pid is never taken for it
        job.changed.notify_all()
    job.save()


def adopt(job: Job, stored: JobRecord) -> None:
    """Take the stored ending (another process settled or cancelled the job) into ``job``'s record."""
    with job.changed:
        rec = job.record
        for key in ("status", "reason", "finished_at", "exit_code", "cpu_s", "log_tail", "cancel_requested"):
            setattr(rec, key, getattr(stored, key))
        job.changed.notify_all()


def persist(ws: Workspace, job: Job) -> None:
    """Write ``job``'s record without undoing what another process stored: an ending already on disk is adopted
    (not overwritten by a stale 'running'), a cancel request on disk is kept. Raises OSError (disk full)."""
    with ws.lock:
        stored = read_record(job.dir)
        if stored is not None and stored.status in TERMINAL and job.status not in TERMINAL:
            adopt(job, stored)
            return
        if stored is not None and stored.cancel_requested and not job.record.cancel_requested:
            with job.changed:
                job.record.cancel_requested = True
                if job.status in RUNNING:
                    job.record.status = "cancelling"
        job.save()


def settle(ws: Workspace, job: Job, code: int | None, cpu_s: float | None = None) -> None:
    """Record how ``job`` ended (its worker has exited): the status from ``lifecycle.final_status``; its final
    checkpoint becomes the current model. If another process settled it first, adopt that. Raises OSError."""
    with ws.lock:
        stored = read_record(job.dir)
        if stored is not None and stored.status in TERMINAL:
            adopt(job, stored)
            return
        if job.status in TERMINAL:  # decided on an earlier try whose write failed (disk full): keep that verdict
            job.save()
            return
        job.drain()
        status, reason = final_status(job.record, code, job_dir=job.dir, ws_root=ws.root)
        ck = job.record.checkpoint
        if ck:  # before the ending is published: whoever sees the job end also sees its model in place
            try:
                ws.update_state(current_checkpoint=ck)
            except OSError as err:  # e.g. the disk is full: the ending is still recorded (in memory at least)
                log.warning("job %s: could not make %s the current model (%s)", job.id, ck, err)
        with job.changed:
            rec = job.record
            rec.status, rec.reason, rec.exit_code = status, reason, code
            rec.finished_at = rec.finished_at or time.time()
            rec.cpu_s = cpu_s if cpu_s is not None else rec.cpu_s
            if status == "failed":
                rec.log_tail = log_tail(job.dir / LOG_FILE)
            job.changed.notify_all()
        log.info("job %s finished: %s (%s)", job.id, status, reason)
        job.save()


def active_jobs(ws: Workspace) -> list[Job]:
    """The active jobs as stored, oldest first (queued ones in queue order)."""
    out = []
    for d in job_dirs(ws):
        rec = read_record(d)
        if rec is not None and rec.status in ACTIVE:
            out.append(Job(d, rec))
    return sorted(out, key=lambda j: (j.record.created_at, _number(j.id)))


def advance(ws: Workspace, python: str, *, follow_session: bool = False) -> Job | None:
    """Start the oldest queued job if no worker runs; a job whose worker is gone is settled first (a killed
    worker never wedges the queue). Returns the job started (its ``proc`` is set), else None."""
    from .lifecycle import read_exit

    with ws.lock:
        jobs = active_jobs(ws)
        for job in (j for j in jobs if j.status in RUNNING):
            if worker_alive(job.record):
                return None
            code, cpu = read_exit(job.dir)
            with contextlib.suppress(OSError):
                settle(ws, job, code, cpu)
        queued = [j for j in jobs if j.status == "queued"]
        if not queued:
            return None
        job = queued[0]
        with contextlib.suppress(OSError):  # recorded as failed; the next one gets its turn
            start_worker(ws, job, python, follow_session=follow_session)
            log.info("job %s: started from the queue", job.id)
            return job
        return advance(ws, python, follow_session=follow_session)


def cancel_queued(ws: Workspace, job: Job) -> bool:
    """Cancel ``job`` if it is still queued (it never ran); False when it has started meanwhile."""
    with ws.lock:
        stored = read_record(job.dir)
        if stored is None or stored.status != "queued":
            return False
        with job.changed:
            job.record = rec = stored
            rec.status, rec.reason, rec.finished_at = "cancelled", "cancelled while queued; it never ran", time.time()
            rec.cancel_requested = True
            job.changed.notify_all()
        job.save()
        return True
