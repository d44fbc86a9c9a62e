"""Training for a time budget: durations, the planner, and the Trainer under a deterministic stand-in clock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch

from bit_transformer import probe, training
from bit_transformer.budget import SLACK, BudgetPlanner, parse_duration
from bit_transformer.checkpoint import resolve_checkpoint
from bit_transformer.factory import build_model
from bit_transformer.training import Trainer
from tests.bit_transformer.test_training import config, corpus, steps

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize(("text_", "seconds"), [("90s", 90), ("15m", 900), ("1.5h", 5400), ("900", 900),
                                                ("2.5", 2.5), (" 5M ", 300)])
def test_durations(text_, seconds):
    assert parse_duration(text_) == seconds


@pytest.mark.parametrize("bad", ["", "15x", "m", "-5m", "0", "1e3"])
def test_bad_durations_name_the_forms(bad):
    with pytest.raises(ValueError, match=r"15m"):
        parse_duration(bad)


def test_cli_rejects_a_bad_budget_naming_the_flag():
    out = subprocess.run([sys.executable, "-m", "bit_transformer", "train", "--time_budget", "15 minutes"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--time_budget" in out.stderr and "1.5h" in out.stderr


def test_config_takes_a_duration_string():
    assert config(time_budget="2m").train.time_budget == 120.0


def test_planner_uses_the_rate_since_the_last_replan():
    p = BudgetPlanner(100.0, used_s=2.0)  # 2 s went to the probe
    assert p.horizon(0, 0.1) == int(98 * SLACK / 0.1)
    for _ in range(80):  # 8 s at 0.1 s/update: the first re-plan point is 10 s
        p.spend(0.1)
    assert p.replan(80) is None
    for _ in range(5):  # then the machine slows to 1 s/update
        p.spend(1.0)
    h = p.replan(85)  # rate since the plan: 85 updates in 13 s
    assert h == 85 + int(85 * SLACK * 85 / 13.0) and p.replans == 1
    for _ in range(10):
        p.spend(1.0)
    assert p.replan(95) == 95 + int(75 * SLACK / 1.0)  # only the slow updates count now


class ForwardClock:
    """A stand-in clock: time moves only when the model runs a forward (training, probe or evaluation), by
    ``cost`` seconds; after ``slow_after`` forwards every forward costs ``slow_cost`` (a machine that gets busy)."""

    def __init__(self, cost: float, slow_after: int | None = None, slow_cost: float | None = None):
        self.t, self.calls, self.cost, self.slow_after, self.slow_cost = 0.0, 0, cost, slow_after, slow_cost

    def __call__(self) -> float:
        return self.t

    def tick(self, *_) -> None:
        self.calls += 1
        slow = self.slow_after is not None and self.calls > self.slow_after
        self.t += self.slow_cost if slow else self.cost

    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        model.register_forward_pre_hook(lambda *_: self.tick())  # a lambda: the probe's deep copy ticks it too
        return model

    def on_training_losses(self, monkeypatch) -> None:
        """Tick on every training micro-batch (probe included) instead: for models the Trainer loads itself."""
        real = training.micro_batch_loss

        def ticking(*args, **kwargs):
            self.tick()
            return real(*args, **kwargs)

        for module in (training, probe):
            monkeypatch.setattr(module, "micro_batch_loss", ticking)


def budget_run(tmp_path, text, clock: ForwardClock, budget: float, **train):
    torch.manual_seed(0)
    cfg = config(time_budget=budget, **{"eval_every": 25, "eval_batches": 2, **train})
    events: list = []
    tr = Trainer(cfg, tmp_path / "run", corpus=corpus(text, 40), model=clock.attach(build_model(cfg.model)),
                 callback=lambda e, p: events.append((e, p)), clock=clock)
    return tr, tr.fit(), events


@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_budget_plan_anneals_to_the_final_lr_at_the_budget(tmp_path, text, schedule):
    # 10 ms per forward, 2 s budget: probe 5 forwards, then about 2 * 0.98 / 0.01 updates. Evaluations run
    # forwards too (eval_every=25) but are not counted: they would eat ~10% of the budget otherwise.
    clock = ForwardClock(0.01)
    tr, res, events = budget_run(tmp_path, text, clock, 2.0, lr_schedule=schedule)
    assert res.status == "completed", res.reason
    plans = [p for e, p in events if e == "plan"]
    assert plans[0].probe_s_per_update == pytest.approx(0.01) and plans[0].time_budget_s == 2.0
    assert 185 <= res.updates_done == res.plan.total_updates <= 200 and res.plan.budget_note is None
    assert tr.state.budget_s <= 2.0 and tr.state.budget_s >= 1.9
    last = steps(events)[-1]
    assert last.lr == pytest.approx(tr.schedule.final_lr) == pytest.approx(config().train.lr * 0.01)
    assert res.last_eval.update == res.updates_done and res.checkpoint.endswith(f"update-{res.updates_done:07d}")
    assert resolve_checkpoint(tmp_path / "run").name == f"update-{res.updates_done:07d}"


def test_a_slow_down_is_replanned_and_still_ends_on_the_final_lr(tmp_path, text):
    # After 60 forwards every forward costs 4x: the first plan (~190 updates) no longer fits in 2 s.
    clock = ForwardClock(0.01, slow_after=60, slow_cost=0.04)
    tr, res, events = budget_run(tmp_path, text, clock, 2.0, lr_schedule="wsd")
    plans = [p for e, p in events if e == "plan"]
    assert res.status == "completed" and len(plans) >= 3 and plans[-1].replans >= 2
    assert res.updates_done == plans[-1].total_updates < plans[0].total_updates - 50
    assert tr.state.budget_s <= 2.0 and res.plan.budget_note is None
    assert steps(events)[-1].lr == pytest.approx(tr.schedule.final_lr)


def test_the_budget_is_a_hard_stop(tmp_path, text):
    # No evaluation until the end, so forwards are the probe's 5 and one per update. The last re-plan (at 90%
    # of the budget, update ~85) plans ~94 updates; then update 91 takes 0.5 s and overruns the budget.
    clock = ForwardClock(0.01, slow_after=5 + 90, slow_cost=0.5)
    tr, res, _ = budget_run(tmp_path, text, clock, 1.0, eval_every=1000)
    assert res.status == "completed" and "budget spent at update 91" in res.plan.budget_note
    assert res.updates_done == res.plan.total_updates == 91 and res.checkpoint.endswith("update-0000091")
    assert res.last_eval.update == 91 and 1.0 <= tr.state.budget_s <= 1.0 + 0.5


def test_resume_continues_with_what_is_left_of_the_budget(tmp_path, text, monkeypatch):
    clock = ForwardClock(0.01)
    clock.on_training_losses(monkeypatch)  # the resumed run trains the checkpoint's model, not ours
    cancel = threading.Event()
    cfg = config(time_budget=2.0, lr_schedule="wsd", eval_every=1000)

    def stop_at_50(event, payload):
        if event == "step" and payload.update == 50:
            cancel.set()

    torch.manual_seed(0)
    first = Trainer(cfg, tmp_path / "run", corpus=corpus(text, 40), model=build_model(cfg.model),
                    callback=stop_at_50, cancel=cancel, clock=clock)
    assert first.fit().updates_done == 50 and 0.5 < first.state.budget_s < 0.6  # probe + 50 updates
    events: list = []
    second = Trainer(cfg, tmp_path / "run", corpus=corpus(text, 40), callback=lambda e, p: events.append((e, p)),
                     clock=clock)
    res = second.fit(resume=True)
    assert res.status == "completed" and res.plan.start_update == 50 and res.plan.budget_note is None
    assert 1.9 <= second.state.budget_s <= 2.0 and 180 <= res.updates_done <= 195
    assert steps(events)[-1].lr == pytest.approx(second.schedule.final_lr)


def test_the_probe_leaves_the_run_untouched(tmp_path, text):
    # With a budget that lands on the same horizon, the budgeted run's updates equal a plain steps= run's.
    clock = ForwardClock(0.01)
    _, res, events = budget_run(tmp_path, text, clock, 2.0, lr_schedule="constant", warmup_frac=0.0)
    torch.manual_seed(0)
    plain = Trainer(config(lr_schedule="constant", warmup_frac=0.0, eval_every=25, eval_batches=2),
                    tmp_path / "plain", corpus=corpus(text, 40), model=build_model(config().model))
    plain_events: list = []
    plain.callback = lambda e, p: plain_events.append((e, p))
    plain.fit(steps=res.updates_done)
    assert [s.loss for s in steps(events)] == [s.loss for s in steps(plain_events)]


def test_cli_time_budget_end_to_end(tmp_path, text):
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "bit_transformer", "--threads", "1"]
    done = subprocess.run([*cmd, "train", "--data", str(data), "--out", str(out), "--layers", "1", "--d_model", "16",
                                 "--nhead", "2", "--max_seq_len", "36", "--batch_size", "4", "--amp", "none",
                                 "--time_budget", "2s", "--budget_clock", "cpu", "--optimizer", "muon",
                                 "--lr_schedule", "wsd", "--ema_decay", "0.9", "--json", "--quiet"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["plan"]["time_budget_s"] == 2.0 and result["plan"]["budget_clock"] == "cpu"
    assert resolve_checkpoint(out).name == f"update-{result['updates_done']:07d}" == out.joinpath(
        "checkpoints", "latest").read_text().strip()
    ev = subprocess.run([*cmd, "evaluate", "--checkpoint", str(out), "--max_bytes", "200", "--json",
                               "--no_compressors"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert 0 < json.loads(ev.stdout)["bits_per_byte"] < 12
