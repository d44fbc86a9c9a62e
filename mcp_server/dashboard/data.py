"""What the dashboard shows, gathered in one place from the job registry, the engine and the workspace.

Units: the trainer reports losses in nats per bit; the dashboard (and the PNG resource) show bits per
byte, ``loss * 9 / ln 2`` (all 9 bit positions of a byte), the unit of ``val_bpb`` and of ``evaluate``.
The compressor lines are gzip -9 / bzip2 -9 / xz -9e on the job's validation bytes given the tail of
its training bytes (as ``evaluate`` conditions them), computed once per corpus in a background thread
and cached in the workspace's data cache.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
from typing import Any

from bit_transformer.baselines import MAX_CONTEXT_BYTES as CONTEXT_BYTES  # noqa: F401 - re-exported (one value)
from bit_transformer.config import FRAME_BITS

from ..events import downsample, num
from ..job import JobRecord

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
MAX_POINTS = 5000  # a first load beyond this many steps is downsampled; later polls send only new steps
MAX_VAL_BYTES = 1 << 20  # keeps xz -9e to a few seconds on a large validation split
TELEMETRY_KEYS = ("K_input", "C_input", "K_pred", "C_pred", "S", "mean_layers_used")

_baseline_lock = threading.Lock()
_baseline_running: set[str] = set()
_baseline_failed: set[str] = set()  # not retried on every poll; a server restart tries again


def to_bpb(loss: Any) -> float | None:
    """A loss in nats per bit -> bits per byte (None for missing or non-finite values)."""
    v = num(loss)
    return round(v * FRAME_BITS / LN2, 5) if v is not None and math.isfinite(v) else None


def _sig(v: Any, digits: int = 4) -> float | None:
    v = num(v)
    return float(f"{v:.{digits}g}") if v is not None and math.isfinite(v) else None


def find_job(app, job_id: str | None):
    """The named job, else the active one, else the newest (None when there are none)."""
    if job_id:
        return app.jobs.get(job_id)
    return app.jobs.active() or app.jobs.latest()


def snapshot(app, job_id: str | None = None, since: int = 0) -> dict[str, Any]:
    """Everything the app draws for one job; ``steps`` holds only updates after ``since``."""
    jobs = app.jobs.all()
    state = app.ws.load_state()
    out: dict[str, Any] = {
        "jobs": [{"id": j.id, "status": j.status} for j in jobs[-30:]],
        "latest": jobs[-1].id if jobs else None,
        "current_checkpoint": state.current_checkpoint,
    }
    job = find_job(app, job_id)
    if job is None:
        out["job"] = None
        out["note"] = f"unknown job {job_id!r}" if job_id else "no jobs yet: train(steps=N) starts one"
        return out
    job.ensure_loaded()
    with job.lock:  # one consistent view: the record's last step is the history's last point
        rec = job.record.model_copy()
        # Updates only grow within a job, so the new points are a tail: no copy of a long history per poll.
        new = rec.history[bisect.bisect_right(rec.history, since, key=lambda p: p.update):]
        evals = list(rec.evals)
    last, plan, ev, result = rec.last_step, rec.plan, rec.last_eval, rec.result
    telemetry = rec.telemetry.model_dump() if rec.telemetry else None
    total = job.total_updates()
    update = job.update()
    start = rec.started_at or rec.created_at
    elapsed = (rec.finished_at or time.time()) - start if start else None
    downsampled = since == 0 and len(new) > MAX_POINTS
    if downsampled:
        new = downsample(new, MAX_POINTS)
    gate = ev.gate if ev else None
    plan_facts = plan.model_dump(include={"precision", "device", "params", "world_size", "batch_size", "seq_len",
                                          "epochs"}, exclude_none=True) if plan else {}
    out.update({
        "job": {
            "id": job.id, "run": job.run, "status": rec.status, "reason": rec.reason, "active": job.active,
            "update": update, "total_updates": total,
            "fraction": round(update / total, 4) if total else None,
            "eta_s": _sig(last.eta_s if last else None) if job.active else 0.0, "elapsed_s": _sig(elapsed),
            "loss_bpb": to_bpb(last.loss if last else None), "val_bpb": _sig(ev.val_bpb if ev else None, 5),
            "best_val_bpb": _sig(result.best_val_bpb if result else None, 5), "checkpoint": rec.checkpoint,
            "plan": plan_facts,
            "data": _short_source(rec.data.source_id if rec.data else None),
        },
        # [update, train loss (bpb), learning rate, compression probability]
        "steps": [[p.update, to_bpb(p.loss), _sig(p.lr), _sig(p.compress_prob)] for p in new],
        "downsampled": downsampled,
        "evals": [[e.update, _sig(e.val_bpb, 5)] for e in evals],
        "gate": None if not gate else {
            "triggered": gate.triggered, "reason": gate.reason, "in_burn_in": gate.in_burn_in,
            "observations": gate.observations, "ema": {k: _sig(v) for k, v in gate.ema.items()},
            "thresholds": {k: _sig(v) for k, v in gate.thresholds.items()},
        },
        "telemetry": None if not telemetry else {
            "update": telemetry.get("update"), **{k: _sig(telemetry.get(k)) for k in TELEMETRY_KEYS
                                                  if telemetry.get(k) is not None}},
        "checkpoints": _checkpoints(app, job.run, state.current_checkpoint),
        "baselines": compressor_baselines(app, rec, block=False),
    })
    return out


def _short_source(source_id: str | None) -> str | None:
    """'files:/abs/ws/data/a.txt,...' -> 'files:a.txt,...': the server's paths stay on the server."""
    if not source_id or not source_id.startswith("files:"):
        return source_id
    return "files:" + ",".join(part.rsplit("/", 1)[-1] for part in source_id[len("files:"):].split(","))


def _checkpoints(app, run: str, current: str | None) -> list[dict[str, Any]]:
    rows = []
    for name, info in app.engine.checkpoints():
        if name.startswith(run + "/"):
            rows.append({"name": name, "update": info.update, "kind": info.kind,
                         "val_bpb": _sig(info.val_bpb, 5), "current": name == current})
    return rows


def compressor_baselines(app, record: JobRecord, *, block: bool) -> dict[str, float] | None:
    """gzip/bzip2/xz bits per byte on the job's validation split, when known (cached per corpus).

    With ``block=False`` a missing entry is computed in a background thread and None is returned meanwhile.
    """
    digest = record.data.content_hash if record.data else None
    data_cfg = record.request.config.get("data")
    if not digest or not data_cfg:
        return None
    path = app.ws.cache_dir / f"baselines-{str(digest)[:24]}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))["bpb"]
    except (OSError, ValueError, KeyError):
        pass
    with _baseline_lock:
        if str(path) in _baseline_running or str(path) in _baseline_failed:
            return None
        _baseline_running.add(str(path))
    if block:
        _compute(app, data_cfg, path)
        return compressor_baselines(app, record, block=False) if path.exists() else None
    threading.Thread(target=_compute, args=(app, data_cfg, path), name="dashboard-baselines", daemon=True).start()
    return None


def _compute(app, data_cfg: dict[str, Any], path) -> None:
    try:
        from bit_transformer.baselines import compressor_bpb, training_context
        from bit_transformer.bits import bits_to_bytes
        from bit_transformer.config import DataConfig

        corpus = app.engine.corpus(DataConfig.model_validate(data_cfg))
        val = bits_to_bytes(corpus.val[: MAX_VAL_BYTES * FRAME_BITS], strict=False)[0]
        context = training_context(corpus.train)  # as evaluate() conditions them
        bpb = {k: round(v, 4) for k, v in compressor_bpb(val, context).items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"bpb": bpb, "val_bytes": len(val), "context_bytes": len(context)}),
                       encoding="utf-8")
        tmp.replace(path)
    except Exception:  # a missing corpus file or a broken cache only loses the lines, never the dashboard
        log.warning("compressor baselines failed", exc_info=True)
        with _baseline_lock:
            _baseline_failed.add(str(path))
    finally:
        with _baseline_lock:
            _baseline_running.discard(str(path))
