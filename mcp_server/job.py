"""One job: its typed request, its record (folded from the typed events of ``events.py``) and where it lives.

On disk a job folder holds each fact once:

- ``request.json``: the ``TrainRequest`` (config snapshot included), written before the worker starts;
- ``job.json``: the ``JobRecord`` without the request, written only by the server: status, pid, times, and
  the latest of each event (plan, step, eval, result...) so listing jobs needs no replay;
- ``metrics.jsonl``: the event log, the source of truth; lists (history, evals, checkpoints, growth) are
  rebuilt from it on first look.

A ``job.json`` of the previous layout (config and request copied into it) still loads: see ``load_record``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bit_transformer.provenance import ToolCall
from bit_transformer.records import (
    CheckpointInfo,
    CorpusInfo,
    EvalMetrics,
    GrowthEvent,
    StepMetrics,
    TrainPlan,
    TrainResult,
)
from bit_transformer.schedule import PlateauSignal

from .events import (
    Checkpointed,
    DataLoaded,
    Done,
    Evaluated,
    Event,
    EventReader,
    Failed,
    Loader,
    Planned,
    Plateau,
    Runtime,
    RuntimeFacts,
    ScaledUp,
    Started,
    Step,
    Telemetry,
    TelemetrySample,
    WorkerError,
    WorkerStarted,
    to_data,
)
from .lifecycle import METRICS_FILE, RECORD_FILE, REQUEST_FILE
from .workspace import atomic_write_json, read_json

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "starting", "running", "cancelling", "completed", "cancelled", "gated", "failed",
                    "interrupted"]
ACTIVE = ("queued", "starting", "running", "cancelling")
TERMINAL = ("completed", "cancelled", "gated", "failed", "interrupted")
MAX_EVALS = 500


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

    def tool_calls(self, root: Path) -> list[ToolCall]:
        """The tool calls that make this job again on a fresh workspace at ``root``: load_checkpoint (a model to
        start from), one patch_config (the config's differences from the defaults), train. A resumed job's own
        config came from the job it resumes, so it is just train(resume=<run>)."""
        from bit_transformer.config import RunConfig

        from .config_ops import diff

        budget = self.config.get("train", {}).get("time_budget")
        args: dict[str, Any] = {k: v for k, v in (("steps", self.steps), ("epochs", self.epochs)) if v is not None}
        if self.processes != 1:
            args["processes"] = self.processes
        if self.resume:
            if budget is not None and not args:
                args["minutes"] = round(budget / 60, 4)
            return [ToolCall(tool="train", arguments={"resume": self.run, **args})]
        patch = {path: _relative(new, root) for path, _, new in diff(RunConfig().model_dump(mode="json"), self.config)}
        calls = [ToolCall(tool="load_checkpoint", arguments={"name": self.init_name})] if self.init_name else []
        if patch:
            calls.append(ToolCall(tool="patch_config", arguments={"patch": patch}))
        return [*calls, ToolCall(tool="train", arguments=args)]


def _relative(value: Any, root: Path) -> Any:
    """Workspace paths as the agent gave them (the request holds them absolute)."""
    if isinstance(value, list):
        return [_relative(v, root) for v in value]
    if isinstance(value, str) and Path(value).is_absolute() and Path(value).is_relative_to(root):
        return str(Path(value).relative_to(root))
    return value


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One step of get_job(history=N): a few fields of ``StepMetrics``, small enough to keep every update."""

    update: int
    epoch: int
    loss: float
    lr: float
    compress_prob: float
    grad_norm: float
    precision: str

    @classmethod
    def of(cls, s: StepMetrics) -> HistoryPoint:
        return cls(s.update, s.epoch, s.loss, s.lr, s.compress_prob, s.grad_norm, s.precision)


class JobRecord(BaseModel):
    """A job's state: what it was asked, where its worker is, and what its events said."""

    model_config = ConfigDict(extra="ignore")  # keys of older layouts (config, growth...) are read elsewhere

    job_id: str
    kind: Literal["train"] = "train"
    status: JobStatus
    reason: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = Field(None, description="Rank 0's worker once it reports; the launcher's until then.")
    launcher_pid: int | None = Field(None, description="The process this server started (torchrun or the worker).")
    pid_start: int | None = Field(None, description="The launcher's start time: a reused pid is never taken for it.")
    cancel_requested: bool = False
    exit_code: int | None = None
    cpu_s: float | None = Field(None, description="CPU seconds the worker used (rank 0, its DataLoader workers "
                                "included), from exit.json.")
    log_tail: str | None = None
    request: TrainRequest = Field(exclude=True)  # stored once, in request.json
    # The latest of each event (kept in job.json too).
    worker: WorkerStarted | None = None
    data: CorpusInfo | None = None
    loader_len: int | None = None
    plan: TrainPlan | None = None
    last_step: StepMetrics | None = None
    last_eval: EvalMetrics | None = None
    checkpoint: str | None = Field(None, description="The newest periodic/final checkpoint, '<run>/<name>'.")
    plateau: PlateauSignal | None = None
    runtime: RuntimeFacts | None = None
    result: TrainResult | None = None
    error: WorkerError | None = None
    # Replayed from metrics.jsonl on first look; never written to job.json.
    history: list[HistoryPoint] = Field(default_factory=list, exclude=True)
    evals: list[EvalMetrics] = Field(default_factory=list, exclude=True)
    checkpoints: list[CheckpointInfo] = Field(default_factory=list, exclude=True)
    growth: list[GrowthEvent] = Field(default_factory=list, exclude=True)
    plateaus: int = Field(0, exclude=True)
    telemetry: TelemetrySample | None = Field(None, exclude=True)

    @property
    def run(self) -> str:
        return self.request.run or self.job_id

    def qualify(self, name: str) -> str:
        """A bare checkpoint name (or path) from the trainer -> "<run>/<name>" as agents use it."""
        return f"{self.run}/{Path(str(name)).name}"

    def apply(self, ev: Event) -> None:
        """Fold one event into the record."""
        match ev:
            case Started(data=d):
                self.worker, self.pid = d, d.pid
                if self.status in ("queued", "starting"):
                    self.status = "running"
                self.started_at = self.started_at or ev.t
            case DataLoaded(data=d):
                self.data = d
            case Loader(data=d):
                self.loader_len = d.loader_len
            case Planned(data=d):
                self.plan = d
            case Step(data=d):
                self.last_step = d
                self.history.append(HistoryPoint.of(d))
            case Evaluated(data=d):
                self.last_eval = d
                self.evals.append(d)
                del self.evals[:-MAX_EVALS]
            case Checkpointed(data=d):
                self._saw_checkpoint(d)
            case Plateau(data=d):
                self.plateaus += 1
                self.plateau = d
            case ScaledUp(data=d):
                self.growth.append(d)
            case Telemetry(data=d):
                self.telemetry = d
            case Runtime(data=d):
                self.runtime = d
            case Done(data=r):
                self.result = r
                if r.checkpoint:
                    self._saw_checkpoint(CheckpointInfo(name=Path(r.checkpoint).name, path=r.checkpoint,
                                                        update=r.updates_done, kind="final"))
                self.plan = r.plan
                self.last_step = r.last_step or self.last_step
                self.last_eval = r.last_eval or self.last_eval
            case Failed(data=e):
                self.error = e

    def _saw_checkpoint(self, info: CheckpointInfo) -> None:
        if all(c.name != info.name for c in self.checkpoints):
            self.checkpoints.append(info)
        if info.kind != "best":
            self.checkpoint = self.qualify(info.name)

    def save(self, job_dir: Path) -> None:
        if not (job_dir / REQUEST_FILE).is_file():  # a job of the old layout: its config moves out of job.json
            atomic_write_json(job_dir / REQUEST_FILE, self.request.model_dump(mode="json"))
        atomic_write_json(job_dir / RECORD_FILE, to_data(self))


SUMMARY = frozenset(("worker", "data", "loader_len", "plan", "last_step", "last_eval", "plateau", "runtime", "result",
                     "error"))
REPLAYED = frozenset(("history", "evals", "checkpoints", "growth", "plateaus", "telemetry"))


class RequestDamaged(ValueError):
    """A job's request.json cannot be read (and no older copy exists): the job manager rebuilds it."""


def _request(job_dir: Path, raw: dict[str, Any]) -> TrainRequest:
    """request.json; for a job.json of the previous layout, its own request + config copy when that is missing."""
    try:
        return TrainRequest.model_validate_json((job_dir / REQUEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        old = raw.get("request")
        if not isinstance(old, dict) or not isinstance(raw.get("config"), dict):
            raise RequestDamaged(f"{REQUEST_FILE} is missing or invalid ({err})") from err
        return TrainRequest.model_validate({**{k: v for k, v in old.items() if k in TrainRequest.model_fields},
                                            "config": raw["config"]})


def load_record(job_dir: Path) -> tuple[JobRecord, bool]:
    """(record, stale): the job's record from job.json + request.json. ``stale`` when part of the stored summary
    did not fit the record (an older layout): the caller replays metrics.jsonl to rebuild it."""
    raw = read_json(job_dir / RECORD_FILE)
    if not isinstance(raw, dict):
        raise ValueError(f"{RECORD_FILE} is not an object")
    body = {k: v for k, v in raw.items() if k not in REPLAYED and k not in ("request", "config")}
    request = _request(job_dir, raw)
    try:
        return JobRecord.model_validate({**body, "request": request}), False
    except ValidationError as err:
        bad = {e["loc"][0] for e in err.errors() if e["loc"]}
        if not bad or bad - SUMMARY:
            raise
        log.info("job %s: stored %s do not fit the record; rebuilding them from its events", job_dir.name,
                 ", ".join(sorted(map(str, bad))))
        body = {k: v for k, v in body.items() if k not in bad}
        return JobRecord.model_validate({**body, "request": request}), True


class Job:
    """A job's record plus what the server holds for it: the event reader, the worker process, a lock."""

    def __init__(self, job_dir: Path, record: JobRecord):
        self.dir = job_dir
        self.record = record
        self.reader = EventReader(job_dir / METRICS_FILE)
        self.proc: subprocess.Popen | None = None
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)

    @property
    def id(self) -> str:
        return self.record.job_id

    @property
    def run(self) -> str:
        return self.record.run

    @property
    def status(self) -> str:
        return self.record.status

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def qualify(self, name: str) -> str:
        return self.record.qualify(name)

    def update(self) -> int:
        return self.record.last_step.update if self.record.last_step else 0

    def total_updates(self) -> int | None:
        return self.record.plan.total_updates if self.record.plan else None

    def ensure_loaded(self) -> None:
        """Replay metrics.jsonl once (history, evals, telemetry) for a job recovered from disk."""
        if self.reader.offset == 0:
            self.drain()

    def drain(self) -> bool:
        """Apply newly written events; True when anything changed."""
        with self.changed:  # one reader at a time: the monitor thread and tools both drain
            events = self.reader.read_events()
            for ev in events:
                self.record.apply(ev)
            if events:
                self.changed.notify_all()
        return bool(events)

    def save(self) -> None:
        with self.lock:
            self.record.save(self.dir)
