"""The EMA + burn-in safety gate (playbook task 7)."""

from __future__ import annotations

import json
import math

import pytest

from bit_transformer.config import SafetyConfig
from bit_transformer.safety import GateDecision, SafetyGate

LN2 = math.log(2)


def test_defaults():
    gate = SafetyGate()
    assert gate.cfg.decay == 0.9 and gate.cfg.burn_in == 10
    assert gate.thresholds == {"loss": pytest.approx(LN2 * 1.05), "C": 0.3, "S": 0.5}
    assert SafetyGate(SafetyConfig(loss_threshold=2.0)).loss_threshold == 2.0


def test_ema_initialises_then_decays():
    gate = SafetyGate(SafetyConfig(burn_in=0))
    d = gate.observe(loss=1.0)
    assert d.ema == {"loss": 1.0}  # first observation initialises
    d = gate.observe(loss=0.0)
    assert d.ema["loss"] == pytest.approx(0.9)
    d = gate.observe(loss=0.0, C=0.8)
    assert d.ema["loss"] == pytest.approx(0.81) and d.ema["C"] == 0.8  # C initialised on its first sighting
    d = gate.observe(C=0.6)
    assert d.ema["C"] == pytest.approx(0.9 * 0.8 + 0.1 * 0.6) and d.ema["loss"] == pytest.approx(0.81)
    assert d.observations == 4


def test_never_triggers_during_burn_in():
    gate = SafetyGate()  # burn_in 10
    for i in range(10):
        d = gate.observe(loss=5.0, C=0.0, S=0.0)
        assert not d.triggered and d.in_burn_in and d.reason is None, i
    d = gate.observe(loss=5.0, C=0.0, S=0.0)
    assert d.triggered and not d.in_burn_in and d.observations == 11
    assert "loss EMA" in d.reason and "C EMA" in d.reason and "S EMA" in d.reason


def test_noisy_early_loss_is_smoothed_away():
    gate = SafetyGate(SafetyConfig(burn_in=3))
    for loss in (3.0, 2.0, 1.0):  # noisy start, inside burn-in
        gate.observe(loss=loss)
    decisions = [gate.observe(loss=0.3) for _ in range(30)]
    assert decisions[0].triggered  # EMA still above ln2 * 1.05 right after burn-in
    assert not decisions[-1].triggered  # ... and recovers as good losses come in
    first_ok = next(i for i, d in enumerate(decisions) if not d.triggered)
    assert all(not d.triggered for d in decisions[first_ok:])


def test_one_spike_after_burn_in_does_not_trigger():
    gate = SafetyGate(SafetyConfig(burn_in=2))
    for _ in range(5):
        assert not gate.observe(loss=0.3).triggered
    d = gate.observe(loss=1.5)  # ema = 0.9 * 0.3 + 0.1 * 1.5 = 0.42 < 0.7278
    assert not d.triggered and d.ema["loss"] == pytest.approx(0.42)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_loss_triggers_after_burn_in_only(bad):
    gate = SafetyGate(SafetyConfig(burn_in=2))
    d = gate.observe(loss=bad)
    assert not d.triggered and d.ema == {}  # in burn-in; and a NaN never enters the EMA
    gate.observe(loss=0.2)
    d = gate.observe(loss=bad)
    assert d.triggered and "loss is" in d.reason
    assert d.ema == {"loss": 0.2}
    assert not gate.observe(loss=0.2).triggered  # judged per observation: not latched
    d = gate.observe(C=bad)
    assert d.triggered and "C is" in d.reason


def test_floors_for_c_and_s():
    gate = SafetyGate(SafetyConfig(burn_in=0, c_floor=0.3, s_floor=0.5))
    assert not gate.observe(C=0.35, S=0.6).triggered
    d = gate.observe(C=0.1)  # ema 0.9 * 0.35 + 0.01 = 0.325: still above
    assert not d.triggered
    d = gate.observe(C=0.0)  # 0.2925 < 0.3
    assert d.triggered and d.reason.startswith("C EMA 0.2925 < floor 0.3000")
    gate2 = SafetyGate(SafetyConfig(burn_in=0))
    d = gate2.observe(S=0.45)
    assert d.triggered and "S EMA" in d.reason and "C" not in d.ema
    assert d.thresholds["S"] == 0.5


def test_state_round_trip_through_json():
    cfg = SafetyConfig(burn_in=3, decay=0.8)
    gate = SafetyGate(cfg)
    for loss, c in ((1.0, 0.9), (0.9, 0.8), (0.8, 0.7), (5.0, 0.7)):
        gate.observe(loss=loss, C=c)
    state = json.loads(json.dumps(gate.state_dict()))
    clone = SafetyGate(cfg)
    clone.load_state_dict(state)
    assert clone.ema == gate.ema and clone.observations == 4 and clone.triggers == gate.triggers
    a, b = gate.observe(loss=0.5, S=0.9), clone.observe(loss=0.5, S=0.9)
    assert a == b
    assert isinstance(a, GateDecision) and GateDecision.model_validate_json(a.model_dump_json()) == a
    with pytest.raises(ValueError, match="version"):
        clone.load_state_dict({"version": 99})
