"""Training for a time budget: durations, the budget clock, and the horizon planner.

``train.time_budget`` replaces steps/epochs with seconds of training. The Trainer measures seconds per update
with a short probe (``probe.measure_update_seconds``, on a throw-away copy), asks ``BudgetPlanner`` for the
horizon that fits the rest of the budget, and re-plans at every ``REPLAN_EVERY`` of the budget from the rate
seen *since the last re-plan*: after a slow-down the run's average lags, the plan overshoots, and the hard stop
would then cut the schedule before it anneals. The last plan leaves ``SLACK`` of the remaining time unused, so
the schedule ends on its final LR just before the budget; the hard stop at the budget is the safety net.
Only training counts (probe, forward, backward, optimizer step); evaluations and checkpoints do not.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable

REPLAN_EVERY = 0.1  # share of the budget between re-plans
SLACK = 0.98  # share of the remaining budget a plan fills
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_FORMS = "seconds (900), or a number with s, m or h (90s, 15m, 1.5h)"

Clock = Callable[[], float]


def parse_duration(text: str | float) -> float:
    """'90s' / '15m' / '1.5h' / '900' -> seconds; ValueError naming the accepted forms."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"expected a positive duration: {DURATION_FORMS}; got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def budget_clock(kind: str) -> Clock:
    """The clock ``train.budget_clock`` names: 'wall' (perf_counter) or 'cpu' (this process's CPU time)."""
    return time.process_time if kind == "cpu" else time.perf_counter


class BudgetPlanner:
    """Turns seconds per update into a horizon that ends the schedule at the budget.

    ``used`` is the budget spent so far (probe included; a resumed run starts from the checkpoint's figure).
    """

    def __init__(self, budget_s: float, *, used_s: float = 0.0, replan_every: float = REPLAN_EVERY):
        self.budget_s, self.used_s = float(budget_s), float(used_s)
        self.step_s = replan_every * self.budget_s
        self.next_replan = (math.floor(self.used_s / self.step_s) + 1) * self.step_s
        self.since = (0, self.used_s)  # (update, used_s) at the last plan
        self.replans = 0

    def horizon(self, update: int, s_per_update: float) -> int:
        """Total updates so that the rest of the budget (less the slack) is filled at ``s_per_update``."""
        self.since = (update, self.used_s)
        left = max(0.0, self.budget_s - self.used_s)
        return update + max(1, math.floor(left * SLACK / max(s_per_update, 1e-6)))  # a clock that did not move

    def spend(self, seconds: float) -> None:
        self.used_s += seconds

    @property
    def exhausted(self) -> bool:
        return self.used_s >= self.budget_s

    def replan(self, update: int) -> int | None:
        """A new horizon when a re-plan is due (from the rate since the last one), else None."""
        if self.used_s < self.next_replan or self.next_replan >= self.budget_s * (1 - 1e-9):
            return None
        while self.next_replan <= self.used_s:
            self.next_replan += self.step_s
        done, spent = update - self.since[0], self.used_s - self.since[1]
        if done < 1 or spent <= 0:
            return None
        self.replans += 1
        return self.horizon(update, spent / done)


def budget_advice(s_per_update: float, updates_per_epoch: int, *, time_budget: float | None,
                  total_updates: int | None) -> str:
    """One line for get_config: what the plan costs on this machine, and what to change for a budget."""
    rate = f"{s_per_update:.3g} s/update here"
    if time_budget is None:
        eta = "" if total_updates is None else f"; {total_updates} updates take ~{_human(total_updates * s_per_update)}"
        return f"{rate}{eta}; for a time limit set train.time_budget (train(minutes=M)): the schedule ends on time"
    updates = max(1, math.floor(time_budget * SLACK / s_per_update))
    epochs = updates / max(1, updates_per_epoch)
    text = f"{rate}: time_budget {_human(time_budget)} is ~{updates} updates ({epochs:.2g} epochs)"
    if updates < 300:
        return text + "; few updates: a smaller model or batch_size learns more in this budget"
    if epochs > 10:
        return text + "; the data repeats >10x: a larger model (d_model, layers) may use this budget better"
    return text


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
