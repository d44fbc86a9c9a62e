"""Typed records of a training run (plan, step, eval, result) and the exact update arithmetic.

``plan_training`` is the single place that turns a config and a dataset size into the number of
optimizer updates, so the LR schedule, the progress ETA, the CLI and the MCP server all agree.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, Field

from .config import RunConfig
from .model import BitTransformerLM
from .runtime import resolve_device, resolve_precision
from .safety import GateDecision


class TrainPlan(BaseModel):
    micro_batches_per_epoch: int
    accum_steps: int
    updates_per_epoch: int
    epochs: int
    total_updates: int
    scheduler_horizon: int
    precision: Literal["bf16", "fp32"]
    precision_reason: str = ""
    device: str
    compile_requested: bool
    compile_ran: bool = False
    compile_reason: str = "decided when training starts"
    world_size: int = 1
    batch_size: int
    seq_len: int
    params: int
    n_train_windows: int = 0
    warmup_updates: int = 0
    lr_schedule: str = "onecycle"
    bits_per_update: int = 0
    resumed_from: str | None = None  # checkpoint this run continued from (fit(resume=True))
    start_update: int = 0
    resume_note: str | None = None  # e.g. the checkpoint came from a different number of processes
    distributed: str | None = None  # 'ddp' / 'fsdp' when world_size > 1


class StepMetrics(BaseModel):
    update: int
    micro_step: int
    epoch: int
    loss: float
    raw_loss: float | None
    compressed_loss: float | None
    lr: float
    compress_prob: float
    ponder_cost: float
    grad_norm: float
    bits_per_s: float
    elapsed_s: float
    eta_s: float | None
    precision: str


class EvalMetrics(BaseModel):
    update: int
    val_loss: float
    val_bpb: float
    gate: GateDecision


class GrowthEvent(BaseModel):
    """A plateau's scale-up request answered in place (``plateau_grow_layers``)."""

    update: int
    layers: int = Field(description="Depth after growing.")
    params_before: int
    params_after: int
    max_logit_change: float = Field(description="Largest logit change on the scale-up probe (new blocks: identities).")


class TrainResult(BaseModel):
    status: Literal["completed", "cancelled", "gated", "failed"]
    reason: str | None = None
    plan: TrainPlan
    updates_done: int
    last_step: StepMetrics | None = None
    last_eval: EvalMetrics | None = None
    checkpoint: str | None = None
    best_val_bpb: float | None = None


def _count_params(cfg: RunConfig) -> int:
    with torch.device("meta"):
        return BitTransformerLM(cfg.model).num_parameters()


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


def warmup_updates(frac: float, total: int) -> int:
    """Updates in the warm-up (also the compression ramp's length): at least one."""
    return max(1, round(frac * total))
