"""The training worker: ``python -m mcp_server.worker <job_dir>`` (started by a server or a finishing worker).

Reads ``<job_dir>/request.json``, trains with the engine's ``Trainer`` and appends every callback
event to ``<job_dir>/metrics.jsonl`` itself. The worker does not depend on the server that started it (its
own session, stdin /dev/null): a server that exits leaves it training and any server on the workspace watches it.
Cancellation: the file ``<job_dir>/cancel`` (any server writes it; the one channel) or SIGTERM/SIGINT set the
``threading.Event`` the Trainer polls at step boundaries; it then saves a resumable checkpoint and returns
status 'cancelled'. With ``BT_JOBS_FOLLOW_SESSION=1`` (``--jobs-follow-session``) EOF on stdin (the server went
away) writes that file too, saying 'shutdown'. At the end, rank 0 writes ``exit.json`` (exit code, CPU time),
records how the job ended in ``job.json`` and starts the next queued job (``queue.py``), so the queue moves on
with no server connected. File names, exit codes and the final-status rule live in ``lifecycle.py``.

Exit codes: 0 when a result was reported (completed, cancelled, gated, even 'failed' from the
trainer), 1 on an exception (an ``error`` event names it; the traceback goes to stderr = worker.log), 28 on a
full disk. Nothing here writes to the MCP server's stdout: the server points our stdout/stderr at worker.log.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from .events import EventWriter, RuntimeFacts
from .lifecycle import (
    CANCEL_FILE,
    DISK_FULL_EXIT,
    ERROR_EXIT,
    METRICS_FILE,
    RESULT_EXIT,
    SHUTDOWN,
    disk_full_reason,
    follow_session_from_env,
    is_disk_full,
    request_cancel,
    write_exit,
)


def _watch_stdin(job_dir: Path) -> None:
    """--jobs-follow-session: EOF on stdin (the server closed the pipe or died) writes the cancel file, the one
    cancel channel, saying why (the job then ends 'interrupted').

    Reads the raw file descriptor, not ``sys.stdin``: a thread blocked in the buffered reader holds
    its lock, a forked DataLoader worker inherits the held lock, and the child's start-up
    (``sys.stdin.close()``) would wait on it forever.
    """
    while True:
        try:
            chunk = os.read(0, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            request_cancel(job_dir, f"{SHUTDOWN}: server went away (stdin closed)")
            return


def _watch_cancel_file(path: Path, cancel: threading.Event, why: list[str], poll_s: float = 0.2) -> None:
    """Set ``cancel`` once ``path`` exists. A file, not a pipe: the job does not depend on the server that
    started it, and a server started later can still cancel it."""
    while not cancel.is_set():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError:
            time.sleep(poll_s)
            continue
        why.append(text.removeprefix(f"{SHUTDOWN}: ") or "cancel_job")
        cancel.set()
        return


def _runtime_facts(model: Any) -> RuntimeFacts:
    """Attention facts of the last forward and the mask cache counters (playbook tasks 9, 10)."""
    import torch

    from bit_transformer.attention import MASK_CACHE

    facts: list[dict[str, Any]] = []
    net = getattr(model, "module", model)
    if net is not None and hasattr(net, "attention_facts"):
        from dataclasses import asdict

        facts = [asdict(f) for f in net.attention_facts()]
    return RuntimeFacts(attention=facts, mask_cache=MASK_CACHE.stats(), torch=torch.__version__,
                        threads=torch.get_num_threads(), python=platform.python_version())


def run(job_dir: Path) -> int:
    from .engine import corpus_info
    from .job import REQUEST_FILE, TrainRequest

    req = TrainRequest.model_validate_json((job_dir / REQUEST_FILE).read_text(encoding="utf-8"))
    request = req.model_dump()  # the Trainer(...) and fit(...) lines below read it as a dict
    threads = os.environ.get("BT_TORCH_THREADS")
    # Under torchrun (train(processes=N)) every rank runs this; rank 0 reports for the job, the
    # others only report their own errors.
    rank = int(os.environ.get("RANK", "0"))
    events = EventWriter(job_dir / METRICS_FILE) if rank == 0 else _ErrorsOnly(job_dir / METRICS_FILE, rank)
    cancel = threading.Event()
    why: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (why.append("signal"), cancel.set()))
    threading.Thread(target=_watch_cancel_file, args=(job_dir / CANCEL_FILE, cancel, why), daemon=True).start()
    if follow_session_from_env():  # --jobs-follow-session: the job ends with its server
        threading.Thread(target=_watch_stdin, args=(job_dir,), daemon=True).start()
    events.emit("started", {"pid": os.getpid(), "python": platform.python_version()})
    trainer = None
    try:
        import torch

        from bit_transformer.config import stored_run_config
        from bit_transformer.data import load_corpus
        from bit_transformer.training import Trainer

        if threads:
            torch.set_num_threads(max(1, int(threads)))

        cfg = stored_run_config(req.config)  # a request queued before a config field existed ran without it
        from bit_transformer.memory_limits import check_fits

        check_fits(cfg, purpose="training")  # fail fast with the estimate and the limit, rather than thrash
        t0 = time.perf_counter()
        corpus = None
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # multi-process: the Trainer loads it, local rank 0 first
            corpus = load_corpus(cfg.data, req.cache_dir)
        model = None
        if req.init_checkpoint:
            from bit_transformer.checkpoint import load_model

            model, _ = load_model(req.init_checkpoint)
            model.train()

        holder: list[Any] = []

        def callback(event: str, payload: Any) -> None:
            events.emit(event, payload)
            if event == "eval" and holder:
                sample = holder[0].telemetry_sample()  # K/C/S sampled at each validation, not every step
                if sample is not None:
                    events.emit("telemetry", {"update": getattr(payload, "update", None),
                                              **sample.model_dump(mode="python")})

        # metrics_log=False: one event log per job (jobs/<id>/metrics.jsonl, written here), not a second copy in
        # another format under runs/<run>/.
        trainer = Trainer(cfg, Path(request["out_dir"]), corpus=corpus, cache_dir=request["cache_dir"], model=model,
                          callback=callback, cancel=cancel, metrics_log=False,
                          invocation=_invocation(job_dir, req))
        holder.append(trainer)
        events.emit("data", corpus_info(trainer.corpus, time.perf_counter() - t0))
        events.emit("loader", _loader_facts(trainer, cfg))
        result = trainer.fit(steps=request.get("steps"), epochs=request.get("epochs"),
                             resume=bool(request.get("resume")))
        events.emit("runtime", _runtime_facts(getattr(trainer, "model", None)))
        if result.status == "cancelled" and why and not result.reason:
            result = result.model_copy(update={"reason": f"cancelled ({why[0]})"})
        events.emit("done", result)
        return RESULT_EXIT
    except BaseException as err:
        if is_disk_full(err):
            # Appends fail now (events, even this log): try once each, then say it with the exit code.
            reason = disk_full_reason(job_dir.parent.parent, job_dir)
            with _quiet():
                print(f"worker: {reason}", file=sys.stderr, flush=True)
            with _quiet():
                events.emit("error", {"reason": reason, "type": "DiskFull"})
            return DISK_FULL_EXIT
        traceback.print_exc(file=sys.stderr)
        events.emit("error", {"reason": _describe(err), "type": type(err).__name__})
        return ERROR_EXIT
    finally:
        with _quiet():  # closing flushes; on a full disk that raises again
            events.close()


def _invocation(job_dir: Path, req: Any):
    """The tool calls behind this job, for the run's provenance.json (the model card's "how it was made")."""
    from bit_transformer.provenance import Invocation

    return Invocation(via="mcp", job=job_dir.name, tool_calls=req.tool_calls(job_dir.parent.parent),
                      metrics=os.path.relpath(job_dir / METRICS_FILE, req.out_dir))


def _quiet():
    import contextlib

    return contextlib.suppress(OSError, ValueError)


class _ErrorsOnly(EventWriter):
    """A non-zero rank's writer: its errors reach the job (tagged with the rank); all else is rank 0's."""

    def __init__(self, path: Path, rank: int):
        super().__init__(path)
        self.rank = rank

    def emit(self, event: str, data: Any = None) -> None:
        if event == "error":
            super().emit(event, {**data, "reason": f"rank {self.rank}: {data.get('reason')}"})


def _loader_facts(trainer: Any, cfg: Any) -> dict[str, Any]:
    """len(DataLoader(train windows, batch_size)) measured independently of the plan (task 1)."""
    from torch.utils.data import DataLoader

    return {"loader_len": len(DataLoader(trainer.train_set, batch_size=cfg.train.batch_size)),
            "train_windows": len(trainer.train_set)}


def _describe(err: BaseException) -> str:
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "OutOfMemory" in name or "out of memory" in text.lower():
        return f"out of memory ({text[:200]}): reduce batch_size, max_seq_len or d_model, or set checkpointing=true"
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return f"{name}: {text[:500]}" if text else name


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mcp_server.worker <job_dir>", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    code = run(job_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        try:  # a server that is not our parent learns the exit code (and CPU time) from here
            write_exit(job_dir, code, _cpu_seconds())
        except OSError as err:
            print(f"could not write the exit file: {err}", file=sys.stderr)
        _finish(job_dir, code)
    return code


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers), user + system."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2)


def _finish(job_dir: Path, code: int) -> None:
    """Settle this job's record and start the next queued job: the queue moves on with no server connected.
    (Under --jobs-follow-session the server that started us is alive and advances the queue itself.)"""
    try:
        from . import queue
        from .job import Job, load_record
        from .lifecycle import read_exit
        from .workspace import Workspace

        ws = Workspace(job_dir.parent.parent)
        job = Job(job_dir, load_record(job_dir)[0])
        queue.settle(ws, job, code, read_exit(job_dir)[1])
        if not follow_session_from_env():
            queue.advance(ws, sys.executable)
    except Exception:  # a server (this one's or the next) settles it and advances the queue instead
        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the stdin watcher thread may still block in readline
