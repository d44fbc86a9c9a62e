"""A job's lifecycle, shared by the server (``jobs.py``), the queue (``queue.py``) and the worker (``worker.py``).

One place for what both sides must agree on: the files of a job folder, the worker's exit codes, how a full disk
is recognised and worded, the one cancel channel (the ``cancel`` file), the follow-session switch, how a worker
process is started and recognised, and ``final_status``: the one function that decides how a job ended, whoever
notices the end (its server, another server, the worker itself, or a server started later).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import JobRecord

log = logging.getLogger(__name__)

# ---- files of jobs/<id>/ ------------------------------------------------------------------------------
REQUEST_FILE = "request.json"  # the TrainRequest (config included), written before the worker starts
RECORD_FILE = "job.json"  # the JobRecord less the request; written under the workspace lock
METRICS_FILE = "metrics.jsonl"  # the worker's event log
LOG_FILE = "worker.log"  # the worker's stdout/stderr
CANCEL_FILE = "cancel"  # the one cancel channel: any server (or the worker's stdin watcher) writes it
EXIT_FILE = "exit.json"  # the worker's exit code and CPU time, for a server that is not its parent
SHUTDOWN = "shutdown"  # first word of a cancel file written because the server went away (-> 'interrupted')

# ---- exit codes -------------------------------------------------------------------------------------------
RESULT_EXIT = 0  # a result was reported (completed, cancelled, gated, even 'failed' from the trainer)
ERROR_EXIT = 1  # an exception: an 'error' event names it, the traceback is in worker.log
DISK_FULL_EXIT = 28  # = ENOSPC: the worker stopped because the disk is full
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 1 << 20  # a filesystem with less free than this counts as full when a worker died unexplained

# ---- follow-session (--jobs-follow-session): jobs stop when their server exits ------------------------------
FOLLOW_SESSION_ENV = "BT_JOBS_FOLLOW_SESSION"
OLD_FOLLOW_SESSION_ENV = "BT_JOB_FOLLOW_SESSION"  # the worker's former name, still accepted


def follow_session_from_env(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get(FOLLOW_SESSION_ENV) is None and env.get(OLD_FOLLOW_SESSION_ENV) is not None:
        log.warning("%s is deprecated; set %s instead", OLD_FOLLOW_SESSION_ENV, FOLLOW_SESSION_ENV)
        return env.get(OLD_FOLLOW_SESSION_ENV) == "1"
    return env.get(FOLLOW_SESSION_ENV) == "1"


# ---- disk full ----------------------------------------------------------------------------------------------
def is_disk_full(err: BaseException | None, *, free_bytes: int | None = None) -> bool:
    """ENOSPC/EDQUOT anywhere in ``err``'s cause/context chain, or ``free_bytes`` below LOW_SPACE_BYTES."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return True
        err = err.__cause__ or err.__context__
    return free_bytes is not None and free_bytes < LOW_SPACE_BYTES


def says_disk_full(reason: str | None) -> bool:
    text = (reason or "").lower()
    return "no space left on device" in text or "os error 28" in text or "disk quota exceeded" in text


def disk_full_reason(ws_root: Path, job_dir: Path, checkpoint: str | None = None) -> str:
    """What an agent reads when the disk filled up: that it is full, where, and what to do."""
    try:
        st = os.statvfs(ws_root)
        space = (f"; {st.f_bavail * st.f_frsize / 2**20:.1f} MiB free of "
                 f"{st.f_blocks * st.f_frsize / 2**20:.0f} MiB on the filesystem holding the workspace")
    except OSError:
        space = ""
    resume = f"from checkpoint {checkpoint!r}" if checkpoint else "from its last checkpoint, if it saved one"
    return (f"the disk is full: no space left on device while writing the job's files (jobs/{job_dir.name}: "
            f"metrics.jsonl, worker.log; runs/ checkpoints){space}. Training stopped. Free space (delete old "
            f"runs, exports or files outside the workspace on that disk), then train(resume=true) continues "
            f"{resume}.")


def _disk_full_seen(job_dir: Path, ws_root: Path) -> bool:
    """The worker died without a word: was it the disk? (its log says so, or the workspace has ~no room)."""
    if "No space left on device" in (log_tail(job_dir / LOG_FILE) or ""):
        return True
    try:
        st = os.statvfs(ws_root)
    except OSError:
        return False
    return is_disk_full(None, free_bytes=st.f_bavail * st.f_frsize)


def log_tail(path: Path, n_bytes: int = 2000) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - n_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return None


# ---- cancel and exit files ----------------------------------------------------------------------------------
def request_cancel(job_dir: Path, why: str = "cancel_job") -> bool:
    """Write the cancel file (the worker polls for it); False when it could not be written (disk full)."""
    try:
        (job_dir / CANCEL_FILE).write_text(why + "\n", encoding="utf-8")
        return True
    except OSError as err:
        log.warning("job %s: could not write the cancel file (%s)", job_dir.name, err)
        return False


def cancel_reason(job_dir: Path) -> str | None:
    """What the cancel file says (None when there is none)."""
    try:
        return (job_dir / CANCEL_FILE).read_text(encoding="utf-8").strip() or "cancel_job"
    except OSError:
        return None


def write_exit(job_dir: Path, code: int, cpu_s: float | None) -> None:
    (job_dir / EXIT_FILE).write_text(json.dumps({"code": code, "t": time.time(), "cpu_s": cpu_s}), encoding="utf-8")


def read_exit(job_dir: Path) -> tuple[int | None, float | None]:
    """(exit code, CPU seconds) from exit.json; (None, None) when the worker wrote none (killed)."""
    try:
        data = json.loads((job_dir / EXIT_FILE).read_text(encoding="utf-8"))
        cpu = data.get("cpu_s")
        return int(data["code"]), float(cpu) if cpu is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


# ---- the final status ---------------------------------------------------------------------------------------
def final_status(rec: JobRecord, code: int | None, *, job_dir: Path, ws_root: Path) -> tuple[str, str | None]:
    """(status, reason) of a job whose worker has ended, from what it reported (``rec``, its events folded in),
    its exit code (None: unknown, the worker vanished without writing exit.json) and its cancel file. The one
    rule, whoever sees the end."""
    result, error, ck = rec.result, rec.error, rec.checkpoint
    if result is not None:
        status, reason = result.status, result.reason
        if status == "failed" and says_disk_full(reason):
            reason = disk_full_reason(ws_root, job_dir, ck)
        if status == "cancelled" and (cancel_reason(job_dir) or "").startswith(SHUTDOWN):
            status = "interrupted"
            update = rec.last_step.update if rec.last_step else 0
            reason = (f"the server shut down; the job stopped at update {update}"
                      + (f" and saved checkpoint {ck!r}" if ck else "") + ". Run train(resume=true) to continue.")
        return status, reason
    if error is not None and not says_disk_full(error.reason):  # a wrapper can hide the ENOSPC
        return "failed", error.reason
    if code == DISK_FULL_EXIT or error is not None or _disk_full_seen(job_dir, ws_root):
        return "failed", disk_full_reason(ws_root, job_dir, ck)
    if code is None:
        return "interrupted", (
            "its worker process is no longer running (killed, or the machine restarted) and reported no result"
            + (f"; its last checkpoint is {ck!r}" if ck else "; it saved no checkpoint")
            + f". Run train(resume='{rec.run}') to continue from the last checkpoint.")
    return "failed", exit_reason(code, rec.cancel_requested)


def exit_reason(code: int, cancel_requested: bool = False) -> str:
    if code < 0:
        sig = -code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        hint = (" (SIGKILL: usually the out-of-memory killer; reduce batch_size/seq_len/d_model)"
                if sig == signal.SIGKILL and not cancel_requested else "")
        return f"the worker process was killed by {name}{hint}"
    return f"the worker process exited with code {code} before reporting a result; see the log tail"


# ---- worker processes ---------------------------------------------------------------------------------------
def worker_command(python: str, job_dir: Path, processes: int = 1) -> list[str]:
    """The worker's command line: the worker itself, or torchrun starting ``processes`` of it on this machine.

    torchrun (PyTorch's launcher) sets RANK/WORLD_SIZE/MASTER_ADDR for each copy; ``--standalone`` picks
    a free local rendezvous port, so concurrent servers never collide.
    """
    worker = ["-m", "mcp_server.worker", str(job_dir)]
    if processes <= 1:
        return [python, *worker]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *worker]


TORCHRUN_ENV = frozenset(("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                          "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def worker_env(base: dict[str, str] | os._Environ, *, follow_session: bool) -> dict[str, str]:
    """The environment of a new worker: ``base`` less torchrun's rendezvous variables (a finishing rank 0 of a
    torchrun job starts the next queued job; they must not leak into it) and with the follow-session switch."""
    env = {k: v for k, v in base.items() if k not in TORCHRUN_ENV and not k.startswith("TORCHELASTIC_")
           and k not in (FOLLOW_SESSION_ENV, OLD_FOLLOW_SESSION_ENV)}
    env["PYTHONUNBUFFERED"] = "1"
    if follow_session:
        env[FOLLOW_SESSION_ENV] = "1"
    return env


def launch(python: str, job_dir: Path, processes: int, *, follow_session: bool) -> subprocess.Popen:
    """Start a job's worker, detached: its own session (no Ctrl-C or SIGHUP from a terminal), stdin /dev/null
    (with follow_session a pipe whose EOF stops the job), output to worker.log, events to the job folder."""
    env = worker_env(os.environ, follow_session=follow_session)
    with open(job_dir / LOG_FILE, "ab") as log_f:
        return subprocess.Popen(worker_command(python, job_dir, processes),
                                stdin=subprocess.PIPE if follow_session else subprocess.DEVNULL, stdout=log_f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def launcher(rec: JobRecord) -> int | None:
    """The process started for the job (torchrun's launcher under processes=N, else the worker)."""
    return rec.launcher_pid or rec.pid


def start_time(pid: int) -> int | None:
    """The process start time (clock ticks since boot, /proc/<pid>/stat field 22); None if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie has finished: not a running worker
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def is_our_worker(pid: int | None, job_id: str, start: int | None = None) -> bool:
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
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def worker_alive(rec: JobRecord) -> bool:
    return is_our_worker(launcher(rec), rec.job_id, rec.pid_start)


def kill_group(pid: int) -> None:
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
