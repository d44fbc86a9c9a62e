"""A stand-in model with a hand-written next-bit rule, for exact evaluation and generation tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bit_transformer.model import ModelOutput
from tests.flat import flat_cfg


class RuleModel(nn.Module):
    """``rule(bits) -> logits (B, T, 2)``; records every input it is given in ``inputs``."""

    def __init__(self, rule, max_seq_len: int = 72):
        super().__init__()
        self.cfg = flat_cfg(layers=1, d_model=8, nhead=1, max_seq_len=max_seq_len)
        self.rule = rule
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device and dtype
        self.inputs: list[torch.Tensor] = []

    def forward(self, bits, *, return_telemetry=False):
        assert bits.shape[1] <= self.cfg.max_seq_len
        self.inputs.append(bits.clone())
        return ModelOutput(self.rule(bits).float(), torch.zeros(()), None)


def copy_previous_frame(x: torch.Tensor) -> torch.Tensor:
    """Predict bit t+1 = bit t-8 (the same phase one frame back), confidently; uniform without it."""
    logits = torch.zeros(*x.shape, 2)
    prev = torch.full_like(x, -1)
    prev[:, 8:] = x[:, :-8]
    known = prev >= 0
    logits[known] = F.one_hot(prev[known], 2).float() * 40 - 20
    return logits
