"""Seconds per optimizer update for a config on this machine: the time budget's probe and get_config's estimate.

The probe trains a throw-away copy of the model (its own optimizer, the RNG state forked and restored), so the
run that follows starts from exactly the state it would have had without it. One warm-up update (allocations,
first-call costs) is not timed; then ``updates`` full updates (``accum_steps`` micro-batches, clipping, the
optimizer step) are.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from .budget import Clock
from .config import RunConfig
from .optim import build_optimizer
from .train_loss import micro_batch_loss

if TYPE_CHECKING:
    from .distill import Teacher

PROBE_UPDATES = 4


def measure_update_seconds(model: torch.nn.Module, cfg: RunConfig, dataset: Dataset, *, device: torch.device,
                           precision: str, updates: int = PROBE_UPDATES, clock: Clock = time.perf_counter,
                           teacher: Teacher | None = None) -> float:
    """Seconds per update; with ``teacher`` its forward is timed too (it is part of every distillation update)."""
    t = cfg.train
    net = copy.deepcopy(model).to(device).train()
    opt = build_optimizer(net, t)
    rows = [dataset[i % len(dataset)] for i in range(t.batch_size)]
    inputs = torch.stack([r[0] for r in rows]).to(device)
    targets = torch.stack([r[1] for r in rows]).to(device)
    cuda = [device.index or 0] if device.type == "cuda" else []

    def update() -> None:
        for _ in range(t.accum_steps):
            parts = micro_batch_loss(net, inputs, targets, cfg=t, ponder_weight=cfg.model.ponder_weight,
                                     compress=None, precision=precision, teacher=teacher)
            (parts.loss / t.accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)

    with torch.random.fork_rng(devices=cuda):
        update()
        t0 = clock()
        for _ in range(updates):
            update()
        return (clock() - t0) / updates


def estimate_update_seconds(cfg: RunConfig, updates: int = 2) -> float:
    """Seconds per update of a fresh ``cfg`` model on random bits (CPU or the configured device): no corpus needed."""
    from .data import BitWindowDataset
    from .device import resolve_device, resolve_precision
    from .factory import build_model

    device = resolve_device(cfg.train.device, 0)
    seq = cfg.model.max_seq_len
    bits = np.random.default_rng(0).integers(0, 2, size=seq * (cfg.train.batch_size + 2), dtype=np.uint8)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(cfg.model)
    precision, _ = resolve_precision(cfg.train.amp, device)
    return measure_update_seconds(model, cfg, BitWindowDataset(bits, seq), device=device, precision=precision,
                                  updates=updates)
