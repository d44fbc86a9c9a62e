"""LR schedules: exact horizon, torch OneCycle parity, shapes, progressive plateau, JSON state."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from bit_transformer.config import TrainConfig
from bit_transformer.schedule import Constant, Cosine, OneCycle, ProgressivePlateau, build_schedule


@pytest.mark.parametrize("horizon", [1, 2, 3, 7, 37, 100])
@pytest.mark.parametrize("pct", [0.0, 0.1, 0.3])
def test_onecycle_matches_torch_and_ends_on_min_lr(horizon, pct):
    ours = OneCycle(1e-3, horizon, pct)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    try:
        ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=horizon, pct_start=pct)
    except ZeroDivisionError:  # torch divides by zero when pct * horizon == 1; ours stays defined
        ref = None
    lrs = []
    for i in range(horizon):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if ref is not None and i < horizon - 1:
            ref.step()
    if ref is not None:
        assert [ours.lr(i) for i in range(horizon)] == pytest.approx(lrs, rel=1e-12, abs=1e-15)
    assert ours.lr(horizon - 1) == pytest.approx(1e-3 / 25 / 1e4) == ours.final_lr
    with pytest.raises(IndexError):
        ours.lr(horizon)


def test_cosine_and_constant_shapes():
    c = Cosine(1e-2, 100, 0.1)
    assert c.lr(0) == pytest.approx(1e-3) and c.lr(9) == pytest.approx(1e-2)
    assert c.lr(99) == pytest.approx(1e-4)
    assert all(c.lr(i) >= c.lr(i + 1) for i in range(10, 99))
    k = Constant(1e-2, 50, 0.0)
    assert {k.lr(i) for i in range(50)} == {1e-2}
    assert Constant(1e-2, 50, 0.2).lr(0) == pytest.approx(1e-3)


def test_progressive_plateau_semantics_and_state():
    s = ProgressivePlateau(1e-2, 1000, 0.04, patience=2, min_delta=0.01, scale_up=True)  # 40 warm-up, 10 re-warm
    assert s.lr(0) == pytest.approx(1e-2 / 40) and s.lr(39) == pytest.approx(1e-2) and s.lr(500) == 1e-2
    assert s.observe(50, 1.0) is None  # first: best
    assert s.observe(100, 0.95) is None  # improved by more than min_delta
    assert s.observe(150, 0.945) is None  # not enough: 1 bad eval
    sig = s.observe(200, 0.96)  # 2 bad evals = patience -> drop
    assert sig is not None and sig.scale_up_requested and sig.drops == 1
    assert sig.lr_after == pytest.approx(1e-2 / math.sqrt(2)) and sig.best_val_loss == 0.95
    assert s.lr(201) == pytest.approx(1e-2 / math.sqrt(2) * (0.1 + 0.9 / 10))  # next update: re-warm starts low
    assert s.lr(211) == pytest.approx(1e-2 / math.sqrt(2)) and s.lr(900) == s.lr(211)
    assert s.observe(250, float("nan")) is None  # divergence is the gate's job
    state = json.loads(json.dumps(s.state_dict()))
    t = ProgressivePlateau(1e-2, 1000, 0.04, patience=2, min_delta=0.01, scale_up=True)
    t.load_state_dict(state)
    assert [t.lr(i) for i in range(195, 260)] == [s.lr(i) for i in range(195, 260)]
    assert t.observe(300, 0.96) == s.observe(300, 0.96)
    with pytest.raises(ValueError, match="schedule"):
        OneCycle(1e-3, 10).load_state_dict(state)


@pytest.mark.parametrize("name", ["onecycle", "cosine", "constant", "progressive_plateau", "wsd"])
def test_build_schedule_uses_the_horizon(name):
    s = build_schedule(TrainConfig(lr_schedule=name, lr=1e-3), 17)
    assert s.name == name and s.horizon == 17
    assert s.lr(16) > 0
    with pytest.raises(IndexError):
        s.lr(17)


def test_wsd_warms_holds_then_decays_by_one_minus_sqrt():
    s = build_schedule(TrainConfig(lr=1.0, lr_schedule="wsd", warmup_frac=0.1, decay_frac=0.2), 100)
    lrs = [s.lr(i) for i in range(100)]
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])  # linear warm-up
    assert lrs[10:80] == [1.0] * 70  # stable
    decay = lrs[80:]  # the last 20%: floor + (1 - floor)(1 - sqrt(k / 20)), k = 1..20
    assert decay == pytest.approx([0.01 + 0.99 * (1 - math.sqrt(k / 20)) for k in range(1, 21)])
    assert all(a > b for a, b in itertools.pairwise(decay)) and s.final_lr == pytest.approx(0.01)


def test_replan_moves_the_end_and_keeps_the_warmup():
    for kind in ("wsd", "cosine", "onecycle"):
        s = build_schedule(TrainConfig(lr=1.0, lr_schedule=kind, warmup_frac=0.1), 100)
        early = [s.lr(i) for i in range(10)]
        s.replan(60)
        assert [s.lr(i) for i in range(10)] == pytest.approx(early)
        assert s.lr(59) == pytest.approx(s.final_lr) and s.final_lr < 0.02
        with pytest.raises(IndexError):
            s.lr(60)
