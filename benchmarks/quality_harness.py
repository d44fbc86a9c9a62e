"""One training harness for the quality comparison: the same loop, budget and schedule for any model.

The bit model and the byte baseline are both trained by :func:`train_for_budget`, so nothing but the
model and its data view differs between them:

* data: non-overlapping windows of the training split (stride = window, like ``data.BitWindowDataset``),
  shuffled every epoch with a seeded generator, batches of ``train.batch_size`` windows;
* optimizer: AdamW with the Trainer's settings (betas 0.9/0.99, ``train.weight_decay`` on matrices only,
  not on embeddings, biases or norms), gradient clipping at ``train.grad_clip``;
* schedule: ``bit_transformer.schedule.build_schedule(train, horizon)`` (default cosine with 5% warm-up);
* budget: ``budget_s`` seconds of training (evaluations excluded). A short probe on a throw-away copy of
  the model measures the update rate and plans the horizon so the schedule anneals by the end; every
  ``replan_every`` of the budget the horizon is re-planned from the rate actually seen (the machine is
  shared and its speed drifts) and the schedule rebuilt for it, and a hard stop ends training at the budget;
* curve: at the fractions ``eval_at`` of the budget the clock is paused and the first ``curve_bytes`` of
  the validation split are scored; the training loss (in bits per byte) is logged as well.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bit_transformer.config import TrainConfig
from bit_transformer.schedule import build_schedule


@dataclass
class Job:
    """What the harness needs to know about one model."""

    name: str
    model: nn.Module
    batch: Callable[[np.ndarray], tuple[torch.Tensor, torch.Tensor]]  # window indices -> (inputs, targets)
    n_windows: int
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]  # mean loss, nats per symbol
    loss_to_bpb: float  # training loss x this = bits per byte (9 / ln 2 for bits, 1 / ln 2 for bytes)
    evaluate: Callable[[nn.Module, int | None], float]  # (model, max val bytes) -> val bits per byte


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW exactly as ``training.Trainer`` builds it."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "emb" not in n]
    keep = [p for n, p in named if not (p.ndim >= 2 and "emb" not in n)]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(0.9, 0.99))


class Batches:
    """Epoch-shuffled batches of window indices (the last partial batch of an epoch is dropped)."""

    def __init__(self, n_windows: int, batch_size: int, seed: int):
        self.n, self.size, self.rng = n_windows, batch_size, np.random.default_rng(seed)
        self.order, self.pos, self.epochs = self.rng.permutation(n_windows), 0, 0

    def next(self) -> np.ndarray:
        if self.pos + self.size > self.n:
            self.order, self.pos, self.epochs = self.rng.permutation(self.n), 0, self.epochs + 1
        idx = self.order[self.pos:self.pos + self.size]
        self.pos += self.size
        return idx


def _update(job: Job, model: nn.Module, opt, batches: Batches, train: TrainConfig) -> float:
    x, y = job.batch(batches.next())
    loss = job.loss(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
    opt.step()
    return float(loss.detach())


def probe_rate(job: Job, train: TrainConfig, updates: int, seed: int,
               clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per update, measured on a throw-away copy (the real run starts from the untouched model)."""
    model = copy.deepcopy(job.model).train()
    opt = make_optimizer(model, train)
    batches = Batches(job.n_windows, train.batch_size, seed + 1)
    _update(job, model, opt, batches, train)  # warm-up: allocations, first-call costs
    t0 = clock()
    for _ in range(updates):
        _update(job, model, opt, batches, train)
    return (clock() - t0) / updates


def train_for_budget(job: Job, train: TrainConfig, budget_s: float, *, probe_updates: int = 30,
                     replan_every: float = 0.1, eval_at: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
                     curve_bytes: int | None = 16384, final_bytes: int | None = None, seed: int = 0,
                     log: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Train ``job.model`` for ``budget_s`` seconds of training time; returns the curve and final score.

    ``clock`` is read for every time decision (probe, re-plans, curve points, the hard stop); tests pass a
    deterministic stand-in so what they assert does not depend on the machine's speed or load.
    """
    t_probe = clock()
    per_update = probe_rate(job, train, probe_updates, seed, clock)
    probe_s = clock() - t_probe
    horizon = max(1, math.floor(budget_s * 0.95 / per_update))
    log(f"[{job.name}] probe {per_update * 1e3:.1f} ms/update -> planning {horizon} updates in {budget_s:.0f} s")
    model = job.model.train()
    opt = make_optimizer(model, train)
    schedule = build_schedule(train, horizon)
    batches = Batches(job.n_windows, train.batch_size, seed)
    marks = sorted(set(eval_at)) or [1.0]
    replans = [k * replan_every * budget_s for k in range(1, math.ceil(1 / replan_every))] if replan_every else []
    curve, losses, window, train_s, update, n_replans = [], [], [], 0.0, 0, 0
    eval_s, last_lr, since = 0.0, float("nan"), (0, 0.0)  # since: (update, train_s) at the last re-plan

    def evaluate(max_bytes: int | None) -> float:
        nonlocal eval_s
        t = clock()
        bpb = job.evaluate(model, max_bytes)
        model.train()
        eval_s += clock() - t
        return bpb

    while update < schedule.horizon and train_s < budget_s:
        t0 = clock()
        last_lr = schedule.apply(opt, update)
        window.append(_update(job, model, opt, batches, train))
        train_s += clock() - t0
        update += 1
        if len(window) >= max(1, schedule.horizon // 200):  # ~200 training-loss points per run
            losses.append({"train_s": round(train_s, 2), "update": update,
                           "train_bpb": float(np.mean(window)) * job.loss_to_bpb})
            window = []
        if replans and train_s >= replans[0]:
            replans = [r for r in replans if r > train_s]
            # The rate since the previous re-plan, not the run's average: after a slow-down the average
            # lags, the plan overshoots, and the hard stop then cuts the schedule before it anneals.
            rate = (update - since[0]) / max(train_s - since[1], 1e-9)
            since = (update, train_s)
            horizon = update + max(1, math.floor(rate * (budget_s - train_s) * 0.98))
            schedule, n_replans = build_schedule(train, horizon), n_replans + 1
        while marks and marks[0] < 1.0 and train_s >= marks[0] * budget_s:
            marks.pop(0)
            curve.append({"train_s": round(train_s, 2), "update": update, "val_bpb": evaluate(curve_bytes)})
            log(f"[{job.name}] {train_s:.0f}s update {update}/{schedule.horizon}: curve val {curve[-1]['val_bpb']:.3f}")
    curve.append({"train_s": round(train_s, 2), "update": update, "val_bpb": evaluate(curve_bytes)})
    t_final = clock()
    final = job.evaluate(model, final_bytes)
    final_eval_s = clock() - t_final
    log(f"[{job.name}] done: {update} updates in {train_s:.0f} s, val {final:.4f} bits/byte "
        f"(final eval {final_eval_s:.0f} s)")
    return {"updates": update, "planned_updates": schedule.horizon, "replans": n_replans,
            "train_seconds": round(train_s, 1), "probe_seconds": round(probe_s, 1),
            "probe_s_per_update": per_update, "curve_eval_seconds": round(eval_s, 1),
            "final_eval_seconds": round(final_eval_s, 1), "epochs": batches.epochs + batches.pos / job.n_windows,
            "completed_schedule": update >= schedule.horizon, "val_bits_per_byte": final,
            "final_lr": last_lr, "schedule_final_lr": schedule.final_lr,
            "curve": curve, "train_loss": losses}
