"""Validation during training: a fixed subset of held-out windows, scored the same way at every evaluation,
and the safety gate's verdict on the result.

Every rank ends with the same loss (rank 0's, broadcast), so the gate and the LR schedule agree everywhere.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from .config import FRAME_BITS, TrainConfig
from .parallel import DistInfo, broadcast_float
from .records import EvalMetrics
from .safety import SafetyGate
from .train_loss import LN2, eval_indices, validation_loss


class Validator:
    def __init__(self, val_set: Dataset | None, cfg: TrainConfig, dist: DistInfo, device: torch.device):
        self.val_set, self.cfg, self.dist, self.device = val_set, cfg, dist, device
        # No validation text (shorter than one window): no evaluations, and so no gate.
        self.indices = eval_indices(len(val_set), cfg.eval_batches * cfg.batch_size) if val_set is not None else []
        self.gate = SafetyGate(cfg.safety)

    def due(self, update: int, *, final: bool) -> bool:
        return bool(self.indices) and (final or update % self.cfg.eval_every == 0)

    def run(self, model: torch.nn.Module, update: int, precision: str, *, sharded: bool) -> EvalMetrics:
        """Validation loss after ``update``, and the gate's decision on it (every rank must call this)."""
        loss = math.nan
        if self.dist.is_main or sharded:  # a sharded model needs every rank in its forward
            loss = validation_loss(model, self.val_set, self.indices, self.cfg.batch_size, self.device, precision,
                                   objective=self.cfg.objective, schedule=self.cfg.diffusion_schedule)
        loss = broadcast_float(loss, self.dist, self.device)
        return EvalMetrics(update=update, val_loss=loss, val_bpb=loss * FRAME_BITS / LN2,
                           gate=self.gate.observe(loss=loss))
