"""Learning-rate schedules with an exact horizon and JSON-serializable state.

Every schedule answers ``lr(i)``: the learning rate of optimizer update ``i`` (0-based). The trainer
applies it right before update ``i`` (one scheduler step per optimizer update, so gradient
accumulation never advances it), and asking for ``i >= horizon`` is an error: a schedule never
steps past its end. ``lr(horizon - 1)`` is the schedule's final value, e.g. OneCycle's ``min_lr``.

Schedules (``TrainConfig.lr_schedule``):

* ``onecycle``  PyTorch ``OneCycleLR`` (two-phase, cosine): ``lr/25`` -> ``lr`` over the first
  ``warmup_frac`` of the updates, then ``lr`` -> ``lr/25/1e4`` at the last update.
* ``cosine``    linear warm-up over ``warmup_frac``, then cosine decay to ``lr * 0.01``.
* ``constant``  linear warm-up over ``warmup_frac``, then ``lr``.
* ``wsd``       warm-up / stable / decay: linear warm-up over ``warmup_frac``, ``lr`` held, then over the last
  ``decay_frac`` of the updates a 1-sqrt decay (``lr * (1 - sqrt(t))``, Hägele et al. 2024) to ``lr * 0.01``.
  The stable phase does not depend on the horizon, so a re-planned budget run only moves where the decay starts.
* ``progressive_plateau``  linear warm-up, then hold ``lr`` while validation improves. After
  ``patience`` evaluations without an improvement of at least ``min_delta`` over the best validation
  loss, the LR is divided by sqrt(2) and re-warmed linearly from 10% of the new value over a short
  window (a quarter of the initial warm-up, at least one update), so a freshly grown model is not hit
  by a full-size step. With ``plateau_scale_up`` the plateau also asks for a scale-up: the trainer
  emits a ``'plateau'`` event (the MCP server may then cancel, ``scale_up`` and resume).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from .config import TrainConfig

ONECYCLE_DIV = 25.0  # torch OneCycleLR defaults
ONECYCLE_FINAL_DIV = 1e4
COSINE_FLOOR = 0.01  # cosine's and wsd's final LR, as a share of lr
REWARM_START = 0.1


def warmup_updates(frac: float, total: int) -> int:
    """Updates in the warm-up: the linear schedules' warm-up, the compression ramp and the plan's figure.

    At least one, so a short run still ramps; OneCycle places its peak by torch's own formula instead.
    """
    return max(1, round(frac * total))


def cosine_ramp(step: int | float, start: float, end: float, total_steps: int | float) -> float:
    """``start`` at step <= 0, ``end`` at step >= total_steps, half-cosine in between (monotone).

    value = start + (end - start) * (1 - cos(pi * step / total_steps)) / 2; total_steps <= 0 gives ``end``.
    Used for the compression probability (playbook task 6: ramp from 0 to 0.5 over the warm-up).
    """
    if total_steps <= 0 or step >= total_steps:
        return float(end)
    if step <= 0:
        return float(start)
    return float(start + (end - start) * (1.0 - math.cos(math.pi * step / total_steps)) / 2.0)


class PlateauSignal(BaseModel):
    """What ``progressive_plateau`` did at an evaluation that ended a plateau."""

    update: int
    val_loss: float
    best_val_loss: float
    lr_before: float
    lr_after: float
    drops: int
    scale_up_requested: bool


class Schedule:
    """Base: warm-up + a shape. Subclasses define ``_shape(i)``; state is plain JSON."""

    name = "base"

    def __init__(self, lr: float, horizon: int, warmup_frac: float = 0.0):
        if horizon < 1:
            raise ValueError(f"a schedule needs at least one update, got horizon={horizon}")
        self.base_lr = float(lr)
        self.horizon = int(horizon)
        self.warmup = warmup_updates(warmup_frac, horizon) if warmup_frac > 0 else 0
        self.last_update = -1  # the last update an LR was handed out for

    def lr(self, i: int) -> float:
        if not 0 <= i < self.horizon:
            raise IndexError(f"update {i} is outside the schedule horizon [0, {self.horizon})")
        return self._shape(i)

    def _shape(self, i: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def replan(self, horizon: int) -> None:
        """A new horizon mid-run (time budget): the warm-up keeps its length, the rest stretches or shrinks."""
        if horizon < 1:
            raise ValueError(f"a schedule needs at least one update, got horizon={horizon}")
        self.horizon = int(horizon)

    def _warm(self, i: int, target: float) -> float:
        return target * (i + 1) / self.warmup if i < self.warmup else target

    def apply(self, optimizer, i: int) -> float:
        """Set every param group's LR for update ``i``; returns it."""
        lr = self.lr(i)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.last_update = i
        return lr

    def observe(self, update: int, val_loss: float) -> PlateauSignal | None:
        """Validation feedback; only the plateau schedule reacts."""
        return None

    @property
    def final_lr(self) -> float:
        return self._shape(self.horizon - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base_lr": self.base_lr, "horizon": self.horizon,
                "warmup": self.warmup, "last_update": self.last_update}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint has a '{state.get('name')}' schedule, this run uses '{self.name}'")
        # Horizon/base LR come from the current plan (a resumed run may be extended); progress does not.
        self.last_update = int(state.get("last_update", -1))


class OneCycle(Schedule):
    name = "onecycle"

    def __init__(self, lr: float, horizon: int, warmup_frac: float = 0.1):
        super().__init__(lr, horizon, 0.0)
        self.initial = self.base_lr / ONECYCLE_DIV
        self.min_lr = self.initial / ONECYCLE_FINAL_DIV
        # Same phase boundaries as torch.optim.lr_scheduler.OneCycleLR(three_phase=False).
        self.peak_at = float(warmup_frac * horizon) - 1
        self.end_at = float(horizon - 1)

    def replan(self, horizon: int) -> None:
        super().replan(horizon)
        self.end_at = float(horizon - 1)

    @staticmethod
    def _cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)

    def _shape(self, i: int) -> float:
        if i <= self.peak_at:
            return self._cos(self.initial, self.base_lr, i / self.peak_at if self.peak_at > 0 else 1.0)
        span = self.end_at - self.peak_at
        return self._cos(self.base_lr, self.min_lr, min(1.0, (i - self.peak_at) / span))


class Cosine(Schedule):
    name = "cosine"

    def _shape(self, i: int) -> float:
        if i < self.warmup:
            return self._warm(i, self.base_lr)
        span = self.horizon - 1 - self.warmup
        pct = 1.0 if span <= 0 else (i - self.warmup) / span
        floor = self.base_lr * COSINE_FLOOR
        return floor + (self.base_lr - floor) * 0.5 * (1 + math.cos(math.pi * pct))


class WSD(Schedule):
    name = "wsd"

    def __init__(self, lr: float, horizon: int, warmup_frac: float = 0.0, decay_frac: float = 0.2):
        super().__init__(lr, horizon, warmup_frac)
        self.decay_frac = decay_frac

    def _shape(self, i: int) -> float:
        decay = max(1, round(self.decay_frac * self.horizon))
        start = self.horizon - decay
        if i < start:
            return self._warm(i, self.base_lr)
        floor = self.base_lr * COSINE_FLOOR
        return floor + (self.base_lr - floor) * (1 - math.sqrt((i - start + 1) / decay))


class Constant(Schedule):
    name = "constant"

    def _shape(self, i: int) -> float:
        return self._warm(i, self.base_lr)


class ProgressivePlateau(Schedule):
    name = "progressive_plateau"

    def __init__(self, lr: float, horizon: int, warmup_frac: float = 0.1, *, patience: int = 3,
                 min_delta: float = 1e-3, scale_up: bool = False):
        super().__init__(lr, horizon, warmup_frac)
        self.patience = patience
        self.min_delta = min_delta
        self.scale_up = scale_up
        self.rewarm = max(1, self.warmup // 4)
        self.level = self.base_lr  # the LR currently held
        self.best: float | None = None
        self.bad_evals = 0
        self.drops = 0
        self.drop_at: int | None = None  # first update that uses the new level

    def _shape(self, i: int) -> float:
        if self.drop_at is None:
            return self._warm(i, self.level)
        k = i - self.drop_at
        if 0 <= k < self.rewarm:
            return self.level * (REWARM_START + (1 - REWARM_START) * (k + 1) / self.rewarm)
        return self.level

    def observe(self, update: int, val_loss: float) -> PlateauSignal | None:
        if not math.isfinite(val_loss):
            return None  # divergence is the safety gate's business, not a plateau
        if self.best is None or val_loss < self.best - self.min_delta:
            self.best = val_loss
            self.bad_evals = 0
            return None
        self.bad_evals += 1
        if self.bad_evals < self.patience:
            return None
        before = self.level
        self.level = before / math.sqrt(2.0)
        self.drops += 1
        self.bad_evals = 0
        self.drop_at = update + 1
        return PlateauSignal(update=update, val_loss=val_loss, best_val_loss=self.best, lr_before=before,
                             lr_after=self.level, drops=self.drops, scale_up_requested=self.scale_up)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "level": self.level, "best": self.best, "bad_evals": self.bad_evals,
                "drops": self.drops, "drop_at": self.drop_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.level = float(state["level"])
        self.best = state["best"]
        self.bad_evals = int(state["bad_evals"])
        self.drops = int(state["drops"])
        self.drop_at = state["drop_at"]


def build_schedule(cfg: TrainConfig, horizon: int) -> Schedule:
    """The schedule ``cfg.lr_schedule`` names, built for exactly ``horizon`` optimizer updates."""
    kind = cfg.lr_schedule
    if kind == "onecycle":
        return OneCycle(cfg.lr, horizon, cfg.warmup_frac)
    if kind == "cosine":
        return Cosine(cfg.lr, horizon, cfg.warmup_frac)
    if kind == "constant":
        return Constant(cfg.lr, horizon, cfg.warmup_frac)
    if kind == "wsd":
        return WSD(cfg.lr, horizon, cfg.warmup_frac, cfg.decay_frac)
    if kind == "progressive_plateau":
        return ProgressivePlateau(cfg.lr, horizon, cfg.warmup_frac, patience=cfg.patience,
                                  min_delta=cfg.min_delta, scale_up=cfg.plateau_scale_up)
    raise ValueError(f"unknown lr_schedule '{kind}': use onecycle, cosine, constant, wsd or progressive_plateau")
