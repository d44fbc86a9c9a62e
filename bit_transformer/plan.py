"""``plan_training``: the single place that turns a config and a dataset size into optimizer updates.

The LR schedule, the progress ETA, the CLI and the MCP server all read the same plan, so they agree on the
update count, the schedule horizon and the warm-up.
"""

from __future__ import annotations

import math

import torch

from .config import RunConfig
from .device import resolve_device, resolve_precision
from .factory import build_model
from .records import TrainPlan
from .schedule import warmup_updates


def _count_params(cfg: RunConfig) -> int:
    with torch.device("meta"):
        return build_model(cfg.model).num_parameters()


def plan_training(cfg: RunConfig, n_train_windows: int, *, steps: int | None = None, epochs: int | None = None,
                  world_size: int = 1, params: int | None = None) -> TrainPlan:
    """The exact update count and schedule horizon for ``n_train_windows`` training windows."""
    t = cfg.train
    per_rank = math.ceil(n_train_windows / world_size)
    micro = math.ceil(per_rank / t.batch_size)
    per_epoch = math.ceil(micro / t.accum_steps) + t.extra_steps
    steps = steps if steps is not None else (t.steps if epochs is None else None)
    if steps is not None:
        total, n_epochs = steps, math.ceil(steps / per_epoch)
    else:
        n_epochs = epochs if epochs is not None else t.epochs
        total = n_epochs * per_epoch
    device = resolve_device(t.device, 0)
    precision, why = resolve_precision(t.amp, device)
    return TrainPlan(
        micro_batches_per_epoch=micro, accum_steps=t.accum_steps, updates_per_epoch=per_epoch, epochs=n_epochs,
        total_updates=total, scheduler_horizon=total, precision=precision, precision_reason=why,
        device=str(device), compile_requested=t.compile, world_size=world_size,
        distributed=t.distributed if world_size > 1 else None, batch_size=t.batch_size,
        seq_len=cfg.model.max_seq_len, params=params if params is not None else _count_params(cfg),
        n_train_windows=n_train_windows, warmup_updates=warmup_updates(t.warmup_frac, total), lr_schedule=t.lr_schedule,
        bits_per_update=t.batch_size * cfg.model.max_seq_len * t.accum_steps * world_size,
    )
