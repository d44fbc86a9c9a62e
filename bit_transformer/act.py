"""Adaptive computation time (Graves 2016) over the layers of a BitTransformerLM.

After layer l (0-based) every still-running position emits a halting probability p_l = sigmoid(w.h_l + b)
from its new state h_l. A position halts at the first layer N-1 where its cumulative mass reaches
``act_threshold`` (or at the last layer). Its output is the halting-weighted mix of its layer states,

    out = sum_{l < N-1} p_l h_l + R h_{N-1},    R = 1 - sum_{l < N-1} p_l   (the remainder),

and its ponder cost is N + R (Graves' rho). ``ModelOutput.ponder_cost`` is the mean of N + R over all
positions, *unscaled*: the training loop adds ``ponder_weight * ponder_cost``. Only R carries a gradient
(N is an integer), which pushes the halting probabilities of the layers before the halt up.

A halted position stops updating: later layers leave its state frozen (it still serves as a key and
value to positions that keep running), so once every position of a batch has halted the remaining
layers cannot change the output and inference skips them (``early exit``).

The running accumulator ``acc`` and cumulative mass ``cum`` are the only state ACT adds. ``acc`` is
linear in the layer states, so its gradient is the same at every layer and its values are never needed
in backward: reversible stacks neither store it nor rebuild it. ``cum`` is un-accumulated in backward
(``cum_prev = cum - p``); the integer layer count N (one int per position) says which positions ran,
continued or halted at each layer, so the discrete decisions replay exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def initial_halting_bias(layers: int) -> float:
    """Bias giving p = 1 / (2 * layers): a fresh model uses every layer and mostly reads the last one."""
    return -math.log(2 * layers - 1) if layers > 1 else 0.0


class HaltingUnit(nn.Module):
    """Per-layer halting probability, computed in at least float32 (also under autocast)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layers = cfg.layers
        self.proj = nn.Linear(cfg.d_model, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.constant_(self.proj.bias, initial_halting_bias(self.layers))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, D) -> p (B, T) in float32 (float64 for a float64 model)."""
        logit = self.proj(h).squeeze(-1)
        return torch.sigmoid(logit.to(torch.promote_types(logit.dtype, torch.float32)))


def act_terms(
    p: torch.Tensor, cum_prev: torch.Tensor, cont: torch.Tensor, halts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer of Graves ACT bookkeeping; shared by the forward pass and the reversible backward.

    cont: positions that ran this layer and keep running; halts: positions halting at this layer.
    Returns (mixing weight w (B, T), new cumulative mass, remainder R (zero where not halting)).
    """
    p_cont = torch.where(cont, p, 0.0)
    remainder = torch.where(halts, 1.0 - cum_prev, 0.0)
    return p_cont + remainder, cum_prev + p_cont, remainder


def layer_masks(n_used: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(running, cont, halts) of `layer` for positions that used `n_used` layers in total."""
    return layer < n_used, layer < n_used - 1, n_used - 1 == layer


class ACTState:
    """Running ACT state of one forward pass: accumulator, cumulative mass, layer count, remainders."""

    def __init__(self, like: torch.Tensor, layers: int, threshold: float, keep_probs: bool = False):
        B, T, _ = like.shape
        dtype = torch.promote_types(like.dtype, torch.float32)  # bookkeeping never in half precision
        self.layers = layers
        self.threshold = threshold
        self.acc = torch.zeros_like(like)  # the stream's dtype (float32 under autocast)
        self.cum = like.new_zeros(B, T, dtype=dtype)
        self.running = torch.ones(B, T, dtype=torch.bool, device=like.device)
        self.n_used = torch.zeros(B, T, dtype=torch.long, device=like.device)
        self.remainder = like.new_zeros(B, T, dtype=dtype)
        self.probs: list[torch.Tensor] | None = [] if keep_probs else None

    def mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(B, T, 1) 1.0 where the position still updates at the next layer, else 0.0."""
        return self.running.unsqueeze(-1).to(dtype)

    def all_halted(self) -> bool:
        return not bool(self.running.any())

    def step(self, layer: int, h: torch.Tensor, p: torch.Tensor) -> None:
        """Account layer `layer`, whose (frozen where halted) output state is h and halting probability p."""
        with torch.no_grad():  # the decisions are discrete; gradients flow through act_terms only
            reached = (self.cum + p) >= self.threshold
            halts = self.running & (reached | (layer == self.layers - 1))
            cont = self.running & ~halts
        w, self.cum, remainder = act_terms(p, self.cum, cont, halts)
        self.acc = self.acc + w.unsqueeze(-1) * h
        self.remainder = self.remainder + remainder
        self.n_used = self.n_used + self.running.long()
        if self.probs is not None:
            self.probs.append(torch.where(self.running, p, 0.0).detach())
        self.running = cont

    def ponder(self) -> torch.Tensor:
        """Mean over positions of N + R (unscaled)."""
        return (self.n_used.float() + self.remainder).mean()

    def halting_telemetry(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(halting (B, T, layers): p where the layer ran, 0 after the halt/early exit; layers_used (B, T))."""
        probs = list(self.probs or [])
        while len(probs) < self.layers:  # layers skipped by early exit computed nothing
            probs.append(torch.zeros_like(self.cum))
        return torch.stack(probs, dim=-1), self.n_used.float()
