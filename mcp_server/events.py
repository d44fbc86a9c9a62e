"""The job event log: a typed union of events, written by the worker and folded by the server into the job record.

A worker appends one JSON object per line to ``jobs/<id>/metrics.jsonl``::

    {"event": "step", "t": 1732700000.1, "data": {...StepMetrics...}}

``Event`` is a pydantic union discriminated on ``event``; each payload is the engine's record
(``bit_transformer.records``) or, for the worker's own facts, a small model here:

==============  ===============================================================
``started``     ``WorkerStarted`` (pid, python)
``data``        ``CorpusInfo`` (source, sizes, cache_hit)
``loader``      ``LoaderFacts`` (len(DataLoader), train windows)
``plan``        ``TrainPlan``
``step``        ``StepMetrics``
``eval``        ``EvalMetrics`` (with the gate decision)
``telemetry``   ``TelemetrySample`` (the update and a TelemetrySummary's fields)
``checkpoint``  ``CheckpointInfo``
``plateau``     ``PlateauSignal``
``scale_up``    ``GrowthEvent``
``runtime``     ``RuntimeFacts`` (attention facts, mask cache, threads)
``done``        ``TrainResult``
``error``       ``WorkerError`` (reason; the traceback is in worker.log)
==============  ===============================================================

JSON has no NaN: non-finite floats are written as the strings "nan"/"inf"/"-inf" (``json_safe``) and pydantic
reads them back as floats. Lines are written with one ``write`` each and flushed; the reader keeps a partial
last line until its newline arrives, and skips (with a warning) a line that is not a known, valid event.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bit_transformer.records import (
    CheckpointInfo,
    CorpusInfo,
    EvalMetrics,
    GrowthEvent,
    StepMetrics,
    TelemetrySummary,
    TrainPlan,
    TrainResult,
)
from bit_transformer.schedule import PlateauSignal

log = logging.getLogger(__name__)


# ---- the worker's own payloads (everything else is an engine record) ----------------------------------------
class WorkerStarted(BaseModel):
    pid: int
    python: str | None = None


class LoaderFacts(BaseModel):
    """len(DataLoader(train windows, batch_size)), measured apart from the plan (playbook task 1)."""

    loader_len: int
    train_windows: int | None = None


class TelemetrySample(TelemetrySummary):
    """K/C/S sampled at a validation (``Trainer.telemetry_sample``), with the update it followed."""

    update: int | None = None


class RuntimeFacts(BaseModel):
    """What the run used: attention facts of the last forward, mask-cache counters, threads (tasks 9, 10)."""

    model_config = ConfigDict(extra="allow")

    attention: list[dict[str, Any]] = Field(default_factory=list)
    mask_cache: dict[str, Any] = Field(default_factory=dict)
    torch: str | None = None
    threads: int | None = None
    python: str | None = None


class WorkerError(BaseModel):
    reason: str = "the worker reported an error"
    type: str | None = None


# ---- the union ----------------------------------------------------------------------------------------------
class _Event(BaseModel):
    t: float = 0.0


class Started(_Event):
    event: Literal["started"]
    data: WorkerStarted


class DataLoaded(_Event):
    event: Literal["data"]
    data: CorpusInfo


class Loader(_Event):
    event: Literal["loader"]
    data: LoaderFacts


class Planned(_Event):
    event: Literal["plan"]
    data: TrainPlan


class Step(_Event):
    event: Literal["step"]
    data: StepMetrics


class Evaluated(_Event):
    event: Literal["eval"]
    data: EvalMetrics


class Telemetry(_Event):
    event: Literal["telemetry"]
    data: TelemetrySample


class Checkpointed(_Event):
    event: Literal["checkpoint"]
    data: CheckpointInfo


class Plateau(_Event):
    event: Literal["plateau"]
    data: PlateauSignal


class ScaledUp(_Event):
    event: Literal["scale_up"]
    data: GrowthEvent


class Runtime(_Event):
    event: Literal["runtime"]
    data: RuntimeFacts


class Done(_Event):
    event: Literal["done"]
    data: TrainResult


class Failed(_Event):
    event: Literal["error"]
    data: WorkerError


Event = Annotated[Started | DataLoaded | Loader | Planned | Step | Evaluated | Telemetry | Checkpointed | Plateau
                  | ScaledUp | Runtime | Done | Failed, Field(discriminator="event")]
EVENTS: TypeAdapter[Event] = TypeAdapter(Event)
KINDS: tuple[str, ...] = tuple(
    m.model_fields["event"].annotation.__args__[0]  # type: ignore[union-attr]
    for m in (Started, DataLoaded, Loader, Planned, Step, Evaluated, Telemetry, Checkpointed, Plateau, ScaledUp,
              Runtime, Done, Failed)
)


def json_safe(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become "nan"/"inf"/"-inf" (in dicts and lists too). The one rule for
    the event log, job.json and tool results (``tools/compact.py``); pydantic reads the strings back as floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def to_data(payload: Any) -> Any:
    """A pydantic model / dataclass / plain value -> JSON-able data (non-finite floats as strings)."""
    if hasattr(payload, "model_dump"):
        return json_safe(payload.model_dump(mode="python"))
    if hasattr(payload, "__dataclass_fields__"):
        from dataclasses import asdict

        return json_safe(asdict(payload))
    return json_safe(payload)


def parse(raw: Any) -> Event | None:
    """One decoded line -> its typed event, or None (logged) for an unknown kind or a payload that does not fit."""
    try:
        return EVENTS.validate_python(raw)
    except ValidationError as err:
        kind = raw.get("event") if isinstance(raw, dict) else None
        why = "unknown event kind" if kind not in KINDS else f"invalid payload ({err.error_count()} errors)"
        log.warning("skipping event %r: %s", kind, why)
        return None


class EventWriter:
    """Append-only JSON-lines writer used by the worker process."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the job's lifetime

    def emit(self, event: str, data: Any = None) -> None:
        row = {"event": event, "t": time.time(), "data": data}
        try:  # the union checks the payload here, where the bug is, not in every later reader
            ev = EVENTS.validate_python(row)
            line = json.dumps({"event": ev.event, "t": ev.t, "data": to_data(ev.data)}, default=str)
        except ValidationError as err:
            # Never stop training for the log: write it as it is; readers skip it (with a warning).
            print(f"event {event!r} does not fit the event union, written untyped: {err}", file=sys.stderr)
            line = json.dumps(to_data(row), default=str)
        self._f.write(line + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class EventReader:
    """Incremental reader of a metrics.jsonl file (keeps its offset and any partial last line)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        """The new complete lines as decoded JSON objects (a torn or non-object line is skipped)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        if not chunk:
            return []
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the chunk ended with a newline
        out = []
        for line in lines:
            if not line.strip():
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                log.warning("skipping a damaged line in %s", self.path)
                continue  # a torn line from a killed worker: skip it, keep the rest
            if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                out.append(ev)
        return out

    def read_events(self) -> list[Event]:
        """The new lines as typed events; a line that is not a known, valid event is skipped with a warning."""
        return [ev for ev in map(parse, self.read_new()) if ev is not None]


def num(value: Any) -> float | None:
    """A float from an event value (NaN/inf were written as strings)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def downsample(points: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` points, evenly spaced, always keeping the first and the last."""
    if limit <= 0:
        return []
    n = len(points)
    if n <= limit:
        return list(points)
    if limit == 1:
        return [points[-1]]
    idx = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [points[i] for i in idx]
