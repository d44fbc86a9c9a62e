"""One job's in-memory state, rebuilt from job.json + metrics.jsonl; folds worker events into it."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .events import EventReader, history_point


class TrainRequest(BaseModel):
    """What a training job is asked to do (``jobs/<id>/request.json``): the one typed contract between the
    train tool, the job manager and the worker process."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(description="The RunConfig snapshot the job trains with.")
    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    resume: bool = False
    run: str | None = Field(None, description="runs/<run>/; a fresh run is named after its first job.")
    resumes: str | None = Field(None, description="The job whose run this one continues.")
    init_checkpoint: str | None = Field(None, description="Absolute path of the starting model (worker only).")
    init_name: str | None = Field(None, description="Its '<run>/<name>'.")
    processes: int = Field(1, ge=1)
    out_dir: str | None = None
    cache_dir: str | None = None


ACTIVE = ("queued", "starting", "running", "cancelling")
TERMINAL = ("completed", "cancelled", "gated", "failed", "interrupted")
MAX_EVALS = 500


class Job:
    """In-memory state of one job, rebuilt from job.json + metrics.jsonl after a restart."""

    def __init__(self, job_dir: Path, record: dict[str, Any]):
        self.dir = job_dir
        self.record = record
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.checkpoints: list[str] = []
        self.telemetry: dict[str, Any] | None = None
        self.plateaus = 0
        self.reader = EventReader(job_dir / "metrics.jsonl")
        self.proc: subprocess.Popen | None = None
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.shutdown_requested = False
        self.run: str = (record.get("request") or {}).get("run") or record["job_id"]

    def qualify(self, name: str) -> str:
        """A bare checkpoint name (or path) from the trainer -> "<run>/<name>" as agents use it."""
        return f"{self.run}/{Path(str(name)).name}"

    @property
    def id(self) -> str:
        return self.record["job_id"]

    @property
    def status(self) -> str:
        return self.record["status"]

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def update(self) -> int:
        step = self.record.get("last_step") or {}
        return int(step.get("update") or 0)

    def total_updates(self) -> int | None:
        plan = self.record.get("plan") or {}
        total = plan.get("total_updates")
        return int(total) if total is not None else None

    # ---- events ----------------------------------------------------------------------------------
    def apply(self, ev: dict[str, Any]) -> None:
        kind, data = ev["event"], ev.get("data")
        rec = self.record
        if kind == "started":
            rec["pid"] = (data or {}).get("pid", rec.get("pid"))
            if rec["status"] in ("queued", "starting"):
                rec["status"] = "running"
            rec["started_at"] = rec.get("started_at") or ev.get("t")
            rec["worker"] = data
        elif kind == "data":
            rec["data"] = data
        elif kind == "plan":
            rec["plan"] = _plan_view(data or {})
        elif kind == "step" and isinstance(data, dict):
            rec["last_step"] = data
            self.history.append(history_point(data))
        elif kind == "eval" and isinstance(data, dict):
            rec["last_eval"] = data
            self.evals.append(data)
            del self.evals[:-MAX_EVALS]
        elif kind == "checkpoint" and isinstance(data, dict):
            name = data.get("name")
            if name:
                name = self.qualify(name)
                if name not in self.checkpoints:
                    self.checkpoints.append(name)
                if data.get("kind") != "best":
                    rec["checkpoint"] = name
        elif kind == "plateau":
            self.plateaus += 1
            rec["plateau"] = data
        elif kind == "scale_up" and isinstance(data, dict):
            rec.setdefault("growth", []).append(data)
        elif kind == "telemetry":
            self.telemetry = data
        elif kind == "runtime":
            rec["runtime"] = data
        elif kind == "loader" and isinstance(data, dict):
            rec["loader_len"] = data.get("loader_len")
        elif kind == "done" and isinstance(data, dict):
            rec["result"] = data
            if data.get("checkpoint"):
                ck = self.qualify(data["checkpoint"])
                rec["checkpoint"] = ck
                if ck not in self.checkpoints:
                    self.checkpoints.append(ck)
            if data.get("plan"):
                rec["plan"] = _plan_view(data["plan"])
            if data.get("last_step"):
                rec["last_step"] = data["last_step"]
            if data.get("last_eval"):
                rec["last_eval"] = data["last_eval"]
        elif kind == "error":
            rec["error"] = data

    def ensure_loaded(self) -> None:
        """Replay metrics.jsonl once (history, evals, telemetry) for a job recovered from disk."""
        if self.reader.offset == 0:
            self.drain()

    def drain(self) -> bool:
        """Apply newly written events; True when anything changed."""
        with self.changed:  # one reader at a time: the monitor thread and tools both drain
            events = self.reader.read_new()
            for ev in events:
                self.apply(ev)
            if events:
                self.changed.notify_all()
        return bool(events)


def _plan_view(plan: dict[str, Any]) -> dict[str, Any]:
    view = dict(plan)
    # Playbook task 1 calls the loader length "steps_per_epoch".
    if "steps_per_epoch" not in view and "micro_batches_per_epoch" in view:
        view["steps_per_epoch"] = view["micro_batches_per_epoch"]
    return view
