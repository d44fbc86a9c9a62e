"""Training progress for the command line: a tqdm bar on a terminal, a few plain lines anywhere else.

``ProgressBar`` is a ``Trainer`` callback reading the 'plan', 'step', 'eval', 'checkpoint', 'plateau' and
'done' events. On a terminal it draws a tqdm bar (update / total, loss, LR, bits/s, ETA) and prints
other events above it. When stderr is a file or a pipe (CI logs, ``2> log``) redrawn ``\\r`` frames would
only pile up, so it writes one plain line per ``lines``-th of the run instead.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm


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
    """Trainer callback: a tqdm bar when ``stream`` is a terminal, else at most ``lines`` progress lines."""

    def __init__(self, stream: TextIO | None = None, *, terminal: bool | None = None, lines: int = 10):
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.lines = max(1, lines)
        self.total = 0
        self._next_line = 0  # plain mode: the update at which the next progress line is due
        self._bar: tqdm | None = None
        self._planned = False  # a plan was shown for the current run: later 'plan' events are re-plans

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)  # above the bar, which tqdm redraws
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def __call__(self, event: str, payload: Any) -> None:
        get = (lambda k, d=None: getattr(payload, k, d)) if payload is not None else (lambda k, d=None: d)
        if event == "plan" and self._planned:  # a time-budget re-plan: same bar, new total
            self.total = int(get("total_updates", 0) or 0)
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()
            elif get("budget_note"):
                self._line(f"time budget: {get('budget_note')}")
        elif event == "plan":
            self._planned = True
            self.total = int(get("total_updates", 0) or 0)
            if get("time_budget_s"):
                self._line(f"time budget {get('time_budget_s'):g} s ({get('budget_clock')} clock): probe "
                           f"{get('probe_s_per_update') * 1e3:.1f} ms/update")
            self._line(
                f"plan: {self.total} updates ({get('epochs')} epochs x {get('updates_per_epoch')}), batch "
                f"{get('batch_size')} x accum {get('accum_steps')}, seq {get('seq_len')} bits, "
                f"{get('params', 0):,} params, {get('precision')} on {get('device')}"
            )
            if self.terminal:
                self._bar = tqdm(total=self.total, file=self.stream, unit="update", dynamic_ncols=True,
                                 mininterval=0.1, leave=True)
        elif event == "step":
            self._step(int(get("update", 0) or 0), get)
        elif event == "eval":
            gate = get("gate")
            note = f" gate TRIGGERED: {gate.reason}" if gate is not None and gate.triggered else ""
            self._line(f"eval @ {get('update')}: val_loss {get('val_loss'):.4f} val_bpb {get('val_bpb'):.3f}{note}")
        elif event == "checkpoint":
            self._line(f"checkpoint {get('name')} ({get('kind')}) -> {get('path')}")
        elif event == "plateau":
            self._line(f"plateau: {payload}")
        elif event == "done":
            self._planned = False
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._line(f"done: {get('status')}" + (f" ({get('reason')})" if get("reason") else ""))

    def _step(self, update: int, get) -> None:
        stats = f"loss {get('loss', float('nan')):.4f} lr {get('lr', 0.0):.2e} {_rate(get('bits_per_s'))}"
        if self._bar is not None:
            self._bar.set_postfix_str(stats, refresh=False)
            self._bar.update(max(0, update - self._bar.n))
            return
        if update < self._next_line and update < self.total:
            return
        self._next_line = update + max(1, self.total // self.lines)
        frac = min(1.0, update / self.total) if self.total else 0.0
        self._line(f"update {update}/{self.total} {frac:4.0%} {stats} ETA {_clock(get('eta_s'))}")
