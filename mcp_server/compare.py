"""compare_runs: the workspace's training jobs side by side, small enough to read in one go (<= 2 KB for 10 runs).

Columnar: one header row, one row per job. Config columns appear only where the jobs differ (named by their leaf,
``lr``, when that is unambiguous, else ``train.lr``); the rest is what an agent ranks experiments by: parameters,
updates done, CPU minutes (the worker's own CPU time, from exit.json), final and best validation bits/byte.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from .job import Job

FIXED = ("job", "status", "params", "updates", "cpu_min", "val_bpb", "best_bpb")
MAX_TEXT = 24  # a differing string value (a data path) is cut to its tail


class RunTable(BaseModel):
    """Jobs side by side: ``columns`` names each position of a row; ``rows`` oldest first."""

    columns: list[str]
    rows: list[list[Any]]


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def _short(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return "..." + value[-(MAX_TEXT - 3):]
    if isinstance(value, list):
        return _short(",".join(map(str, value)))
    return value


def _bpb(value: float | None) -> float | None:
    return round(value, 4) if value is not None and math.isfinite(value) else None


def _best(job: Job) -> float | None:
    rec = job.record
    if rec.result is not None and rec.result.best_val_bpb is not None:
        return rec.result.best_val_bpb
    job.ensure_loaded()  # a running or interrupted job: its evals come from the event log
    finite = [e.val_bpb for e in rec.evals if math.isfinite(e.val_bpb)]
    return min(finite) if finite else None


def compare(jobs: list[Job]) -> RunTable:
    """The table for ``jobs`` (in the order given)."""
    configs = [_flat(j.record.request.config) for j in jobs]
    keys = sorted({k for c in configs for k in c})
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    names = [k.rsplit(".", 1)[-1] if leaves.count(k.rsplit(".", 1)[-1]) == 1 else k for k in differ]
    rows = []
    for job, cfg in zip(jobs, configs, strict=True):
        rec = job.record
        plan = rec.plan or (rec.result.plan if rec.result else None)
        rows.append([job.id, rec.status, plan.params if plan else None, job.update(),
                     round(rec.cpu_s / 60, 2) if rec.cpu_s is not None else None,
                     _bpb(rec.last_eval.val_bpb) if rec.last_eval else None, _bpb(_best(job)),
                     *(_short(cfg.get(k)) for k in differ)])
    return RunTable(columns=[*FIXED, *names], rows=rows)
