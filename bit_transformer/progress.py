"""A plain-text progress bar for training: one ``\\r``-updated line on stderr, no dependencies.

``ProgressBar`` is a ``Trainer`` callback: it reads the 'plan', 'step', 'eval', 'checkpoint',
'plateau' and 'done' events (step: update, loss, LR, bits/s, ETA) and draws at most one bar update per
``min_interval`` seconds; other events print their own line.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _rate(bits_per_s: float | None) -> str:
    if not bits_per_s:
        return "- bit/s"
    for unit, scale in (("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_s >= scale:
            return f"{bits_per_s / scale:.1f} {unit}"
    return f"{bits_per_s:.0f} bit/s"


class ProgressBar:
    """Trainer callback that draws a one-line, ``\\r``-updated bar on ``stream``; no dependencies."""

    def __init__(self, stream: TextIO | None = None, width: int = 24, min_interval: float = 0.1):
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.total = 0
        self._last_draw = 0.0
        self._open = False  # a bar line is on screen without its newline

    def _line(self, text: str) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: str, payload: Any) -> None:
        get = (lambda k, d=None: getattr(payload, k, d)) if payload is not None else (lambda k, d=None: d)
        if event == "plan":
            self.total = int(get("total_updates", 0) or 0)
            self._line(
                f"plan: {self.total} updates ({get('epochs')} epochs x {get('updates_per_epoch')}), batch "
                f"{get('batch_size')} x accum {get('accum_steps')}, seq {get('seq_len')} bits, "
                f"{get('params', 0):,} params, {get('precision')} on {get('device')}"
            )
        elif event == "step":
            now = time.monotonic()
            update = int(get("update", 0) or 0)
            if now - self._last_draw < self.min_interval and update < self.total:
                return
            self._last_draw = now
            frac = min(1.0, update / self.total) if self.total else 0.0
            filled = int(frac * self.width)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(
                f"\r[{bar}] {update}/{self.total} {frac:4.0%} loss {get('loss', float('nan')):.4f} "
                f"lr {get('lr', 0.0):.2e} {_rate(get('bits_per_s'))} ETA {_clock(get('eta_s'))} "
            )
            self.stream.flush()
            self._open = True
        elif event == "eval":
            gate = get("gate")
            note = f" gate TRIGGERED: {gate.reason}" if gate is not None and gate.triggered else ""
            self._line(f"eval @ {get('update')}: val_loss {get('val_loss'):.4f} val_bpb {get('val_bpb'):.3f}{note}")
        elif event == "checkpoint":
            self._line(f"checkpoint {get('name')} ({get('kind')}) -> {get('path')}")
        elif event == "plateau":
            self._line(f"plateau: {payload}")
        elif event == "done":
            self._line(f"done: {get('status')}" + (f" ({get('reason')})" if get("reason") else ""))
