"""The shared quality harness: budget, schedule re-planning, curve, and the Trainer's optimizer settings."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks.byte_baseline import VOCAB, ByteTransformer, evaluate_bytes
from benchmarks.quality_harness import Batches, Job, make_optimizer, train_for_budget
from bit_transformer.config import TrainConfig


def test_batches_cover_each_window_once_per_epoch():
    b = Batches(10, 3, seed=0)
    first = np.concatenate([b.next() for _ in range(3)])  # 9 of 10 windows, the partial batch is dropped
    assert len(set(first.tolist())) == 9 and b.epochs == 0
    b.next()
    assert b.epochs == 1


def test_optimizer_groups_match_the_trainer():
    model = ByteTransformer(1, 16, 2, context=8)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.05))
    decay, keep = opt.param_groups
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert model.tok_emb.weight in [p for p in keep["params"]]  # embeddings are not decayed
    assert opt.defaults["betas"] == (0.9, 0.99)


class UpdateClock:
    """A deterministic stand-in for ``time.perf_counter``: time moves only when the job computes a training
    loss, by ``cost`` seconds per update, and the cost can change mid-run (a machine that gets loaded)."""

    def __init__(self, cost: float, slow_after: int | None = None, slow_cost: float | None = None):
        self.t, self.calls, self.cost, self.slow_after, self.slow_cost = 0.0, 0, cost, slow_after, slow_cost

    def __call__(self) -> float:
        return self.t

    def tick(self) -> None:
        self.calls += 1
        slow = self.slow_after is not None and self.calls > self.slow_after
        self.t += self.slow_cost if slow else self.cost


def periodic_job(clock: UpdateClock, phrase: bytes = b"the cat sat on the mat.  ") -> Job:
    """A byte model on a periodic text. The phrase is 25 bytes, coprime to the 8-byte window stride, so the
    training windows start at every phase of the text. (The old 24-byte phrase gave exactly 3 distinct
    windows: the model memorised them, training loss went to 0 and validation, read at other phases, rose
    with every update, so a faster machine, running more updates, saw a rising curve.)"""
    torch.manual_seed(0)
    text = np.frombuffer(phrase * 400, dtype=np.uint8)
    train, val = text[:8000], text[8000:]
    model = ByteTransformer(1, 32, 2, context=8)
    offsets = np.arange(9)

    def batch(idx):
        w = torch.from_numpy(train[idx[:, None] * 8 + offsets[None, :]].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def loss(m, x, y):
        clock.tick()
        return F.cross_entropy(m(x).reshape(-1, VOCAB), y.reshape(-1))

    return Job("byte", model, batch, (train.size - 1) // 8, loss, 1 / math.log(2),
               lambda m, n: evaluate_bytes(m, val, min_context=6, max_bytes=n)["bits_per_byte"])


CFG = TrainConfig(batch_size=8, lr=5e-3, warmup_frac=0.05, lr_schedule="cosine")


def test_a_short_budget_trains_and_reports_a_curve():
    # 10 ms per update on the stand-in clock: a 3 s budget plans floor(3 * 0.95 / 0.01) = 285 updates.
    clock = UpdateClock(0.01)
    res = train_for_budget(periodic_job(clock), CFG, 3.0, probe_updates=5, eval_at=(0.5, 1.0), curve_bytes=400,
                           log=lambda m: None, clock=clock)
    assert res["probe_s_per_update"] == pytest.approx(0.01)
    assert res["updates"] == res["planned_updates"] and res["completed_schedule"]
    assert 250 <= res["updates"] <= 300 and res["train_seconds"] <= 3.0
    assert len(res["curve"]) == 2 and 1.5 <= res["curve"][0]["train_s"] < res["curve"][1]["train_s"]
    assert res["replans"] >= 1
    # A periodic text is easy: far below the 8 bits/byte of a uniform guess, and the curve went down.
    assert res["val_bits_per_byte"] < 1.0
    assert res["curve"][-1]["val_bpb"] < res["curve"][0]["val_bpb"]
    assert res["train_loss"] and res["train_loss"][-1]["train_bpb"] < res["train_loss"][0]["train_bpb"]
    # The LR ended where the plan said: the cosine floor at the last update of the (re-planned) horizon.
    assert res["final_lr"] == pytest.approx(res["schedule_final_lr"]) == pytest.approx(CFG.lr * 0.01)


def test_a_machine_that_slows_down_is_replanned_to_end_on_budget():
    # After 100 updates every update costs 4x: the first plan (285 updates) no longer fits in 3 s. The
    # re-plans shrink the horizon so the schedule still anneals fully before the hard stop.
    clock = UpdateClock(0.01, slow_after=100, slow_cost=0.04)
    res = train_for_budget(periodic_job(clock), CFG, 3.0, probe_updates=5, eval_at=(0.5, 1.0), curve_bytes=400,
                           log=lambda m: None, clock=clock)
    assert res["replans"] >= 2 and res["train_seconds"] <= 3.0
    assert res["updates"] == res["planned_updates"] < 285 and res["completed_schedule"]
    assert res["final_lr"] == pytest.approx(res["schedule_final_lr"]) == pytest.approx(CFG.lr * 0.01)


def test_the_old_24_byte_phrase_is_memorised_and_its_curve_rises():
    # The diagnosis of the rising curve, kept as a test: with a 24-byte phrase (3 distinct windows) the
    # same run memorises the windows and validation gets worse between the two curve points.
    clock = UpdateClock(0.01)
    res = train_for_budget(periodic_job(clock, b"the cat sat on the mat. "), CFG, 3.0, probe_updates=5,
                           eval_at=(0.5, 1.0), curve_bytes=400, log=lambda m: None, clock=clock)
    assert res["train_loss"][-1]["train_bpb"] < 0.05  # memorised
    assert res["curve"][-1]["val_bpb"] > res["curve"][0]["val_bpb"]  # and validation rose
