"""The loss curve: training loss and validation in bits per byte against the update, as a matplotlib PNG.

Drawn for the server's ``bt://jobs/{id}/loss.png`` resource and for the model card. ``read_points`` reads an
event log in either layout: the CLI's ``metrics.jsonl`` (``{"event": "step", ...StepMetrics}``) and the MCP
worker's (``{"event": "step", "data": {...StepMetrics}}``).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from pydantic import BaseModel, Field

from .config import FRAME_BITS

LN2 = math.log(2.0)
COLORS = {"gzip": "#8a8f99", "bzip2": "#a37b4c", "xz": "#4c8aa3"}  # as in the dashboard app


class CurvePoints(BaseModel):
    """(update, loss in nats per bit) of the training steps and of the validations."""

    steps: list[tuple[int, float]] = Field(default_factory=list)
    evals: list[tuple[int, float]] = Field(default_factory=list)


def to_bpb(loss) -> float | None:
    """Nats per bit -> bits per byte (None for a missing or non-finite loss)."""
    try:
        value = float(loss)
    except (TypeError, ValueError):
        return None
    return value * FRAME_BITS / LN2 if math.isfinite(value) else None


def read_points(paths: list[Path]) -> CurvePoints:
    """The step and eval losses of the event logs ``paths`` (in order; missing files and bad lines skipped)."""
    out = CurvePoints()
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                row = json.loads(line)
                data = row.get("data", row)
                if row.get("event") == "step":
                    out.steps.append((int(data["update"]), float(data["loss"])))
                elif row.get("event") == "eval":
                    out.evals.append((int(data["update"]), float(data["val_loss"])))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
    return out


def loss_curve_figure(points: CurvePoints, title: str = "", baselines: dict[str, float] | None = None):
    """Training loss and validation (dots) in bits per byte against the update, with compressor lines."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in a server thread
    from matplotlib.figure import Figure

    def bpb(rows: list[tuple[int, float]]) -> list[tuple[int, float]]:
        return [(u, v) for u, v in ((u, to_bpb(loss)) for u, loss in rows) if v is not None]

    steps, evals = bpb(points.steps), bpb(points.evals)
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot()
    if steps:
        ax.plot([u for u, _ in steps], [v for _, v in steps], label="train loss", lw=1)
    if evals:
        ax.plot([u for u, _ in evals], [v for _, v in evals], "o-", label="validation", ms=3.5, lw=0.8)
    for name, v in sorted((baselines or {}).items()):
        ax.axhline(v, ls="--", lw=1, color=COLORS.get(name, "0.45"), label=f"{name} {v:.2f}")
    if not steps and not evals:
        ax.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("bits per byte")
    ax.set_title(f"{title} bits per byte".strip())
    ax.grid(alpha=0.3)
    if steps or evals:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def loss_curve_png(points: CurvePoints, title: str = "", baselines: dict[str, float] | None = None) -> bytes:
    buf = io.BytesIO()
    loss_curve_figure(points, title, baselines).savefig(buf, format="png")
    return buf.getvalue()
