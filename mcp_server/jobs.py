"""Training jobs: a registry in the server, the work in a child process (``python -m mcp_server.worker``).

Why a child process: a crash, NaN, out-of-memory kill or runaway C extension in training then ends
that job only; the server keeps answering. Why detached: a job outlives the server that started it (a
one-shot client, a host restart); the next server on the workspace re-attaches. Everything goes through
the job folder, never a pipe:

- ``jobs/<id>/request.json`` (written before the start): the ``TrainRequest``, config snapshot included.
- ``jobs/<id>/cancel``: written by ``cancel_job`` (any server); the worker stops at the next step
  boundary and saves a resumable checkpoint.
- ``jobs/<id>/metrics.jsonl`` (events, see ``events.py``), appended by the worker, tailed by a monitor
  thread per job; ``worker.log`` its output; ``exit.json`` its exit code.

``job.json`` (the ``JobRecord`` of ``job.py`` less the request) is written only by the server (on every
status change), so there is one writer. It records the worker's pid and start time (``/proc/<pid>/stat``):
a server that starts finds active jobs, checks each pid is still that job's worker (same start time, job
id in its command line, so a reused pid is never signalled), re-attaches to the live ones and marks dead
ones interrupted (or failed / completed from what they reported). ``follow_session=True``
(``--jobs-follow-session``) keeps the old behaviour: a job stops with a checkpoint when its server exits
(stdin EOF).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .job import ACTIVE, REQUEST_FILE, TERMINAL, Job, JobRecord, RequestDamaged, TrainRequest, load_record
from .worker import CANCEL_FILE, DISK_FULL_EXIT, EXIT_FILE, FOLLOW_SESSION_ENV, disk_full_reason, is_disk_full
from .workspace import Workspace, atomic_write_json, read_json

log = logging.getLogger(__name__)

__all__ = ["ACTIVE", "TERMINAL", "Job", "JobBusyError", "JobManager"]


class JobBusyError(RuntimeError):
    """A training job is already active."""


class JobManager:
    """Starts, watches, cancels and recovers training jobs (one active at a time)."""

    def __init__(self, ws: Workspace, *, on_finish: Callable[[Job], None] | None = None,
                 poll_s: float = 0.1, python: str | None = None, follow_session: bool = False):
        self.ws = ws
        self.on_finish = on_finish
        self.poll_s = poll_s
        self.python = python or sys.executable
        # False (default): jobs outlive this server and a later one re-attaches. True: the old behaviour, a job
        # stops (with a checkpoint) when the server that started it exits.
        self.follow_session = follow_session
        self._jobs: dict[str, Job] = {}
        self._lock = threading.RLock()
        self._recover()

    # ---- registry ----------------------------------------------------------------------------------
    def _recover(self) -> None:
        # Confined walk: a job folder (or its files) that is a symlink or leads outside is never loaded,
        # listed or rewritten (entries() logs a warning for each one skipped).
        for d in self.ws.entries(self.ws.jobs_dir, what="job", files=("job.json", "metrics.jsonl", "worker.log")):
            path = d / "job.json"
            if not path.is_file():
                continue
            try:
                try:
                    record, stale = load_record(d)
                except RequestDamaged as err:
                    self._rebuild_request(d, str(err))
                    record, stale = load_record(d)
            except (OSError, ValueError) as err:
                log.warning("skipping unreadable job %s: %s", d.name, err)
                continue
            job = Job(d, record)
            if job.active or stale:  # history of finished jobs is replayed lazily, on first look
                job.drain()
            if job.active:
                if not self.follow_session and _is_our_worker(_launcher(record), job.id, record.pid_start):
                    self._jobs[job.id] = job
                    self._attach(job)
                    continue
                self._mark_interrupted(job)
            self._jobs[job.id] = job

    def _rebuild_request(self, job_dir: Path, why: str) -> None:
        """A damaged request.json must not hide the job (its status, metrics and checkpoints are intact): keep the
        file as ``request.json.bad-<ts>``, write a request with the config of the run's newest checkpoint (else
        the workspace config), and leave a notice saying so."""
        raw = read_json(job_dir / "job.json")
        if not isinstance(raw, dict):
            raise ValueError("job.json is not an object")
        run = str(raw.get("checkpoint") or "").split("/")[0] or job_dir.name
        config, source = self.ws.load_config_dict(), "the workspace config"
        ckpts = self.ws.entries(self.ws.runs_dir / run / "checkpoints", what="checkpoint", files=("meta.json",))
        for ckpt in reversed([c for c in ckpts if c.name.startswith("update-")]):
            meta = ckpt / "meta.json"
            with contextlib.suppress(OSError, ValueError):
                data = read_json(meta) if meta.is_file() else None
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

    def _attach(self, job: Job) -> None:
        """Watch a job a previous server started (its worker is alive and is that job's, pid and start time
        checked): status, progress, metrics and cancel_job work as for our own children."""
        log.info("job %s: re-attached to its running worker (pid %s)", job.id, job.record.pid)
        threading.Thread(target=self._monitor, args=(job,), name=f"monitor-{job.id}", daemon=True).start()

    def _mark_interrupted(self, job: Job) -> None:
        rec = job.record
        ck = rec.checkpoint
        if rec.result is not None and rec.result.status in ("completed", "gated", "failed"):
            rec.status = rec.result.status  # it finished after the server went away
            rec.reason = rec.result.reason
        elif rec.error is not None:  # the worker reported why it stopped (e.g. disk full)
            rec.status, rec.reason = "failed", rec.error.reason
        else:
            rec.status = "interrupted"
            why = ("the server stopped while this job was running" if self.follow_session else
                   "its worker process is no longer running (killed, or the machine restarted) and reported no "
                   "result")
            rec.reason = (
                why
                + (f"; its last checkpoint is {ck!r}" if ck else "; it saved no checkpoint")
                + f". Run train(resume='{job.run}') to continue from the last checkpoint."
            )
        rec.finished_at = rec.finished_at or time.time()
        pid = _launcher(rec)
        if pid and _is_our_worker(pid, job.id, rec.pid_start):
            # An orphan still running (server was killed): ask it to checkpoint and stop.
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        self._persist_or_log(job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.record.created_at)

    def latest(self) -> Job | None:
        jobs = self.all()
        return jobs[-1] if jobs else None

    def active(self) -> Job | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.active), None)

    def _new_id(self) -> str:
        n = 1 + max((int(j.id.split("-")[1]) for j in self._jobs.values() if j.id.count("-") >= 1
                     and j.id.split("-")[1].isdigit()), default=0)
        while (self.ws.jobs_dir / f"job-{n:04d}").exists():
            n += 1
        return f"job-{n:04d}"

    def _persist(self, job: Job) -> None:
        job.save()

    def _persist_or_log(self, job: Job) -> bool:
        """Persist, but never raise (the monitor thread must not die): False, with a warning, on failure."""
        try:
            self._persist(job)
            return True
        except OSError as err:
            log.warning("job %s: could not write job.json (%s); the record is kept in memory and written "
                        "again later", job.id, err)
            return False

    # ---- start -------------------------------------------------------------------------------------
    def start(self, request: dict[str, Any] | TrainRequest) -> Job:
        """Create a job directory, write its request and spawn the worker. Raises JobBusyError."""
        req = TrainRequest.model_validate(request)  # a bad request fails here, not in the worker
        with self._lock:
            busy = self.active()
            if busy is not None:
                raise JobBusyError(busy.id)
            job_id = self._new_id()
            job_dir = self.ws.jobs_dir / job_id
            job_dir.mkdir(parents=True)
            run = req.run or job_id  # a fresh run is named after its first job
            req = req.model_copy(update={"run": run, "out_dir": str(self.ws.runs_dir / run),
                                         "cache_dir": str(self.ws.cache_dir)})
            self.ws.drop_links(self.ws.cache_dir, what="cache")  # the worker writes there: no links out
            record = JobRecord(job_id=job_id, status="starting", created_at=time.time(), request=req)
            atomic_write_json(job_dir / REQUEST_FILE, req.model_dump(mode="json"))  # the config's one copy
            (job_dir / "metrics.jsonl").touch()
            job = Job(job_dir, record)
            self._jobs[job_id] = job
            self._persist(job)
            log_f = open(job_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.pop(FOLLOW_SESSION_ENV, None)
            if self.follow_session:
                env[FOLLOW_SESSION_ENV] = "1"
            try:
                job.proc = subprocess.Popen(
                    worker_command(self.python, job_dir, req.processes),
                    # Detached: no pipe to this server (stdin /dev/null), its own session (no Ctrl-C or SIGHUP
                    # from the server's terminal), events and logs written to the job folder by the worker.
                    stdin=subprocess.PIPE if self.follow_session else subprocess.DEVNULL, stdout=log_f,
                    stderr=subprocess.STDOUT, env=env, start_new_session=True,
                )
            except OSError as err:
                record.status, record.reason = "failed", f"could not start the worker process: {err}"
                record.finished_at = time.time()
                self._persist(job)
                raise
            finally:
                log_f.close()
            record.pid = record.launcher_pid = job.proc.pid  # "pid" becomes rank 0's when it reports
            record.pid_start = _start_time(job.proc.pid)  # with the pid: a reused pid is never taken for it
            self._persist(job)
        threading.Thread(target=self._monitor, args=(job,), name=f"monitor-{job_id}", daemon=True).start()
        return job

    # ---- monitor -----------------------------------------------------------------------------------
    def _monitor(self, job: Job) -> None:
        """Tail the job's events until the worker exits, then finalise. Never dies silently: an error is
        logged and the loop goes on; a record that cannot be written (disk full) is retried until it is."""
        last_status, exited = job.status, False
        while not exited:
            try:
                exited = (job.proc.poll() is not None if job.proc is not None
                          else not _is_our_worker(_launcher(job.record), job.id, job.record.pid_start))
                job.drain()
                if job.status != last_status and self._persist_or_log(job):
                    last_status = job.status
            except Exception:
                log.exception("job %s: monitor error (still watching)", job.id)
            if not exited:
                time.sleep(self.poll_s)
        try:
            job.drain()
        except Exception:
            log.exception("job %s: could not read its last events", job.id)
        delay = 1.0
        persisted = self._finalize(job)
        while not persisted:  # e.g. ENOSPC: the record is final in memory; write it once space allows
            time.sleep(delay)
            delay = min(30.0, delay * 2)
            persisted = self._persist_or_log(job)

    def _finalize(self, job: Job) -> bool:
        """Fold the worker's end into the record and run the finish hook; True when job.json was written."""
        code = job.proc.returncode if job.proc else _exit_file_code(job.dir)
        # The hook runs before the terminal status is published, so a caller that sees the job end (e.g.
        # cancel_job's wait) also sees its effects (the final checkpoint is already the current model).
        if self.on_finish is not None:
            try:
                self.on_finish(job)
            except Exception:
                log.exception("on_finish hook failed for %s", job.id)
        with job.changed:
            rec = job.record
            result, error = rec.result, rec.error
            if result is not None:
                status, reason = result.status, result.reason
                if status == "failed" and _says_disk_full(reason):
                    reason = disk_full_reason(self.ws.root, job.dir, rec.checkpoint)
                if status == "cancelled" and job.shutdown_requested:
                    status = "interrupted"
                    ck = rec.checkpoint
                    reason = (f"the server shut down; the job stopped at update {job.update()}"
                              + (f" and saved checkpoint {ck!r}" if ck else "")
                              + ". Run train(resume=true) to continue.")
            elif error is not None and not _says_disk_full(error.reason):  # a wrapper can hide the ENOSPC
                status, reason = "failed", error.reason
            elif code == DISK_FULL_EXIT or error is not None or _disk_full_seen(job, self.ws):
                status, reason = "failed", disk_full_reason(self.ws.root, job.dir, rec.checkpoint)
            else:
                status, reason = "failed", _exit_reason(code, job)
            rec.status, rec.reason, rec.finished_at, rec.exit_code = status, reason, time.time(), code
            if status == "failed":
                rec.log_tail = _log_tail(job.dir / "worker.log")
            job.changed.notify_all()
        persisted = self._persist_or_log(job)  # on failure the monitor retries until it is written
        log.info("job %s finished: %s (%s)", job.id, status, reason)
        return persisted

    # ---- cancel / shutdown ---------------------------------------------------------------------------
    def cancel(self, job: Job, *, force: bool = False) -> None:
        """Ask the worker to stop at the next step boundary (it saves a checkpoint); ``force`` kills it."""
        with job.changed:
            if not job.active:
                return
            job.record.cancel_requested = True
            job.record.status = "cancelling"
            job.changed.notify_all()
        self._persist_or_log(job)  # a full disk must not stop the cancel request reaching the worker
        pid = _launcher(job.record)
        ours = _is_our_worker(pid, job.id, job.record.pid_start)
        if force:
            if ours:
                _kill_group(pid)
            return
        try:  # the worker polls for this file: works for a worker a previous server started too
            (job.dir / CANCEL_FILE).write_text("cancel\n", encoding="utf-8")
            written = True
        except OSError as err:
            log.warning("job %s: could not write the cancel file (%s); signalling the worker", job.id, err)
            written = False
        proc = job.proc
        if self.follow_session and proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write(b"cancel\n")
                proc.stdin.flush()
        elif not written and ours:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)  # the signal handler sets the same cancel event

    def shutdown(self, timeout: float = 20.0) -> None:
        """Server exit. Default: jobs keep running (the next server re-attaches). With follow_session: stop
        active jobs at a step boundary (checkpoint saved) and mark them interrupted."""
        if not self.follow_session:
            running = [j.id for j in self.all() if j.active]
            if running:
                log.info("server exiting; jobs %s keep running (the next server on this workspace re-attaches)",
                         ", ".join(running))
            return
        active = [j for j in self.all() if j.active and j.proc is not None]
        for job in active:
            job.shutdown_requested = True
            self.cancel(job)
        deadline = time.monotonic() + timeout
        for job in active:
            while job.active and time.monotonic() < deadline:
                time.sleep(0.05)
            if job.active:  # stuck: the closed stdin will still stop it; record the truth now
                log.warning("job %s did not stop within %.0f s; leaving it to finish its checkpoint", job.id, timeout)
                with job.changed:
                    job.record.status, job.record.finished_at = "interrupted", time.time()
                    job.record.reason = ("the server shut down while the job was still stopping; run "
                                         "train(resume=true) to continue from its last checkpoint")
                self._persist(job)

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


def worker_command(python: str, job_dir: Path, processes: int = 1) -> list[str]:
    """The worker's command line: the worker itself, or torchrun starting ``processes`` of it on this machine.

    torchrun (PyTorch's launcher) sets RANK/WORLD_SIZE/MASTER_ADDR for each copy; ``--standalone`` picks
    a free local rendezvous port, so concurrent servers never collide.
    """
    worker = ["-m", "mcp_server.worker", str(job_dir)]
    if processes <= 1:
        return [python, *worker]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *worker]


def _kill_group(pid: int) -> None:
    """SIGKILL the worker and everything it started (DataLoader workers would otherwise be orphaned).

    The worker leads its own session (``start_new_session``), so its process group id is its pid. Under
    torchrun each rank leads a session of its own too, so the launcher's children are killed first.
    """
    for child in _children(pid):
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:  # threads come and go: read each one's list on its own
        with contextlib.suppress(OSError, ValueError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _says_disk_full(reason: str | None) -> bool:
    text = (reason or "").lower()
    return "no space left on device" in text or "os error 28" in text or "disk quota exceeded" in text


def _launcher(rec: JobRecord) -> int | None:
    """The process this server started (torchrun's launcher under processes=N, else the worker)."""
    return rec.launcher_pid or rec.pid


def _start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot, /proc/<pid>/stat field 22); None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie has finished: not a running worker
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_our_worker(pid: int | None, job_id: str, start: int | None = None) -> bool:
    """``pid`` runs this job's worker: its command line names the job and, when known, its start time
    matches the one recorded at launch, so a pid the system reused for another process is never taken."""
    if not pid:
        return False
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"mcp_server.worker" not in cmd or not any(part.endswith(job_id.encode()) for part in cmd):
        return False
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def _exit_file_code(job_dir: Path) -> int | None:
    try:
        return int(read_json(job_dir / EXIT_FILE)["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _exit_reason(code: int | None, job: Job) -> str:
    if code is None:
        return "the worker process ended without a result"
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = (" (SIGKILL: usually the out-of-memory killer; reduce batch_size/seq_len/d_model)"
                if sig == signal.SIGKILL and not job.record.cancel_requested else "")
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {code} before reporting a result; see the log tail"


def _disk_full_seen(job: Job, ws: Workspace) -> bool:
    """The worker died without a word: was it the disk? (its log says so, or the workspace has ~no room)."""
    tail = _log_tail(job.dir / "worker.log") or ""
    if "No space left on device" in tail:
        return True
    try:
        st = os.statvfs(ws.root)
    except OSError:
        return False
    return is_disk_full(None, free_bytes=st.f_bavail * st.f_frsize)


def _log_tail(path: Path, n_bytes: int = 2000) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
