"""The job event stream: what a worker process writes and how the server folds it into job state.

A worker appends one JSON object per line to ``jobs/<id>/metrics.jsonl``::

    {"event": "step", "t": 1732700000.1, "data": {...StepMetrics...}}

Events: ``started`` (pid, versions), ``data`` (corpus facts incl. cache_hit), ``plan`` (TrainPlan),
``step`` (StepMetrics), ``eval`` (EvalMetrics with the gate decision), ``checkpoint`` (CheckpointInfo),
``plateau``, ``telemetry`` (TelemetrySummary), ``runtime`` (attention facts, mask cache, threads),
``done`` (TrainResult) and ``error`` (reason; the traceback is in worker.log). Lines are written
with one ``write`` each and flushed; the reader keeps a partial last line until its newline arrives.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

HISTORY_KEYS = ("update", "epoch", "loss", "lr", "compress_prob", "grad_norm", "precision")


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become strings so every line stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def to_data(payload: Any) -> Any:
    """A pydantic model / dataclass / plain value -> JSON-able data."""
    if hasattr(payload, "model_dump"):
        return _clean(payload.model_dump(mode="python"))
    if hasattr(payload, "__dataclass_fields__"):
        from dataclasses import asdict

        return _clean(asdict(payload))
    return _clean(payload)


class EventWriter:
    """Append-only JSON-lines writer used by the worker process."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the job's lifetime

    def emit(self, event: str, data: Any = None) -> None:
        line = json.dumps({"event": event, "t": time.time(), "data": to_data(data)}, default=str)
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
                continue  # a torn line from a killed worker: skip it, keep the rest
            if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                out.append(ev)
        return out


def num(value: Any) -> float | None:
    """A float from an event value (NaN/inf were written as strings)."""
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def history_point(step: dict[str, Any]) -> dict[str, Any]:
    return {k: step.get(k) for k in HISTORY_KEYS if k in step}


def downsample(points: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
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
