"""The EMA + burn-in safety gate (playbook task 7), used by training and by generation.

Each watched value (``loss``, ``C``, ``S``) keeps its own exponential moving average: its first
observation initialises it, later ones update ``ema = decay * ema + (1 - decay) * x``. During the
first ``burn_in`` observations the gate never triggers (early validations are noisy). After that it
triggers when

* the loss EMA exceeds ``loss_threshold`` (default ``ln 2 * 1.05``: no better than a coin flip), or the
  observed loss is NaN/inf;
* the C EMA falls below ``c_floor`` (default 0.3: degenerate, repetitive output);
* the S EMA falls below ``s_floor`` (default 0.5: predictions agree with the data less than a coin flip);
* an observed C or S is NaN/inf.

Non-finite values never enter an EMA (one NaN would poison it for good); they trigger on the
observation where they occur, unless it is in burn-in. The gate does not latch: each decision judges
the current EMAs. Its state is a small JSON-serializable dict, stored with checkpoints.
"""

from __future__ import annotations

import math

from .config import SafetyConfig
from .records import GateDecision

DEFAULT_LOSS_FACTOR = 1.05
STATE_VERSION = 1


class SafetyGate:
    """EMA + burn-in gate over validation loss and the C/S telemetry; see the module docstring."""

    def __init__(self, cfg: SafetyConfig | None = None):
        self.cfg = cfg or SafetyConfig()
        self.ema: dict[str, float] = {}
        self.observations = 0
        self.triggers = 0

    @property
    def loss_threshold(self) -> float:
        if self.cfg.loss_threshold is not None:
            return self.cfg.loss_threshold
        return math.log(2) * DEFAULT_LOSS_FACTOR

    @property
    def thresholds(self) -> dict[str, float]:
        return {"loss": self.loss_threshold, "C": self.cfg.c_floor, "S": self.cfg.s_floor}

    def observe(self, loss: float | None = None, C: float | None = None, S: float | None = None) -> GateDecision:
        """Fold in whatever values are given (None = not measured this time) and judge."""
        self.observations += 1
        in_burn_in = self.observations <= self.cfg.burn_in
        bad: list[str] = []
        for name, value in (("loss", loss), ("C", C), ("S", S)):
            if value is None:
                continue
            x = float(value)
            if not math.isfinite(x):
                bad.append(f"{name} is {x}")
                continue
            prev = self.ema.get(name)
            self.ema[name] = x if prev is None else self.cfg.decay * prev + (1.0 - self.cfg.decay) * x
        limits = self.thresholds
        if "loss" in self.ema and self.ema["loss"] > limits["loss"]:
            bad.append(f"loss EMA {self.ema['loss']:.4f} > threshold {limits['loss']:.4f}")
        for name in ("C", "S"):
            if name in self.ema and self.ema[name] < limits[name]:
                bad.append(f"{name} EMA {self.ema[name]:.4f} < floor {limits[name]:.4f}")
        triggered = bool(bad) and not in_burn_in
        self.triggers += int(triggered)
        return GateDecision(
            triggered=triggered,
            reason="; ".join(bad) if triggered else None,
            ema=dict(self.ema),
            observations=self.observations,
            in_burn_in=in_burn_in,
            thresholds=limits,
        )

    def state_dict(self) -> dict:
        """JSON-serializable state (EMAs are always finite)."""
        return {
            "version": STATE_VERSION,
            "ema": dict(self.ema),
            "observations": self.observations,
            "triggers": self.triggers,
            "config": self.cfg.model_dump(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore EMAs and counters; the gate keeps the SafetyConfig it was built with."""
        if state.get("version", STATE_VERSION) != STATE_VERSION:
            raise ValueError(f"unsupported safety gate state version {state.get('version')}")
        self.ema = {str(k): float(v) for k, v in state.get("ema", {}).items()}
        self.observations = int(state.get("observations", 0))
        self.triggers = int(state.get("triggers", 0))
