"""Masked ("absorbing state") discrete diffusion over bits: the ``denoise`` objective and its sampler.

A bidirectional model (``model.causal = false``) is trained to restore masked bits, as in MDLM (Sahoo
et al. 2024). At diffusion time ``t`` in (0, 1] each data bit is replaced by the mask symbol ``MASK``
with probability ``gamma(t) = 1 - alpha(t)``; the schedule (``linear``, ``cosine``, ``exponential``)
sets how fast bits disappear. The model sees the noisy window and gives, at every position, logits
for that position's clean bit (no shift: position p predicts bit p).

**The bound.** With the weight ``w(t) = gamma'(t) / gamma(t)``, the loss

    L = E_t [ w(t) * sum over masked data bits of -log p(clean bit | noisy window) ]

is the continuous-time negative ELBO, an upper bound on the window's negative log-likelihood in nats.
Substituting ``gamma`` for ``t`` shows it does not depend on the schedule (``int_0^1 E[...] dgamma /
gamma``): the schedule only decides which noise levels training sees. ``bits_per_byte`` of a denoising
model is this bound per byte / ln 2, comparable with a causal model's figure as an upper bound.

**Parity.** A parity bit is a function of its frame's eight data bits, so it costs nothing and is never
sampled: it is masked whenever any data bit of its frame is masked (so it leaks nothing about them) and
revealed, or set by the sampler, once all eight are known. The loss counts data bits only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from .config import FRAME_BITS

MASK = 2  # input symbol of a masked bit; the model embeds it with its own vector
Schedule = Literal["linear", "cosine", "exponential"]
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "exponential")
_EXP_RATE = 5.0  # exponential schedule: alpha falls like exp(-5 t), rescaled to reach 0 at t = 1
T_MIN = 1e-3  # smallest diffusion time drawn: w(t) ~ 1/t near 0, where almost nothing is masked


def mask_rate(t: torch.Tensor, schedule: Schedule = "linear") -> torch.Tensor:
    """gamma(t) = P(a data bit is masked at time t); gamma(0) = 0, gamma(1) = 1, increasing."""
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return 1.0 - torch.cos(0.5 * math.pi * t)
    if schedule == "exponential":
        return (1.0 - torch.exp(-_EXP_RATE * t)) / (1.0 - math.exp(-_EXP_RATE))
    raise ValueError(f"unknown diffusion schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def loss_weight(t: torch.Tensor, schedule: Schedule = "linear") -> torch.Tensor:
    """w(t) = gamma'(t) / gamma(t), the NELBO weight of a masked bit's cross-entropy at time t."""
    if schedule == "linear":
        return 1.0 / t
    if schedule == "cosine":
        return 0.5 * math.pi * torch.sin(0.5 * math.pi * t) / (1.0 - torch.cos(0.5 * math.pi * t))
    if schedule == "exponential":
        return _EXP_RATE * torch.exp(-_EXP_RATE * t) / (1.0 - torch.exp(-_EXP_RATE * t))
    raise ValueError(f"unknown diffusion schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def sample_times(n: int, *, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``n`` stratified times in [T_MIN, 1]: one uniform draw per stratum of width 1/n (lower variance
    than n independent draws, the same expectation)."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    t = (torch.arange(n, dtype=torch.float64) + u) / n
    return (T_MIN + (1.0 - T_MIN) * t).float().to(device)


def data_positions(length: int, device=None) -> torch.Tensor:
    """(length,) bool: True at data bits (frame phases 0-7), False at parity bits."""
    return torch.arange(length, device=device) % FRAME_BITS < FRAME_BITS - 1


def parity_masked(masked_data: torch.Tensor) -> torch.Tensor:
    """Mask of the parity positions: a parity bit is hidden while any data bit of its frame is."""
    B, T = masked_data.shape
    frames = masked_data.reshape(B, T // FRAME_BITS, FRAME_BITS)[..., : FRAME_BITS - 1].any(-1)
    out = torch.zeros_like(masked_data)
    out[:, FRAME_BITS - 1 :: FRAME_BITS] = frames
    return out


def corrupt(clean: torch.Tensor, t: torch.Tensor, *, schedule: Schedule = "linear",
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each data bit of row b with probability ``gamma(t[b])``; parity follows its frame.

    Returns ``(noisy, masked_data)``: ``noisy`` holds 0/1 where visible and ``MASK`` where hidden, and
    ``masked_data`` marks the hidden *data* bits (the ones the loss scores). The clean value of a masked
    position never reaches ``noisy``.
    """
    B, T = clean.shape
    if T % FRAME_BITS:
        raise ValueError(f"denoising windows are whole frames: length {T} is not a multiple of {FRAME_BITS}")
    u = torch.rand(B, T, generator=generator, dtype=torch.float32).to(clean.device)
    gamma = mask_rate(t.float(), schedule).to(clean.device)[:, None]
    masked_data = (u < gamma) & data_positions(T, clean.device)[None, :]
    hidden = masked_data | parity_masked(masked_data)
    noisy = torch.where(hidden, torch.full_like(clean, MASK), clean)
    return noisy, masked_data


def masked_ce(logits: torch.Tensor, clean: torch.Tensor, masked_data: torch.Tensor) -> torch.Tensor:
    """(B, T) cross-entropy (nats) of each masked data bit's clean value; 0 elsewhere."""
    ce = F.cross_entropy(logits.float().reshape(-1, 2), clean.reshape(-1).long(), reduction="none")
    return ce.reshape(clean.shape) * masked_data


def nelbo(model: torch.nn.Module, clean: torch.Tensor, *, schedule: Schedule = "linear",
          t: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """One-sample NELBO of each row of ``clean`` (B, T) in nats: ``(per_row, weighted_ce, out)``.

    ``weighted_ce`` (B, T) is each masked data bit's ``w(t) * CE`` (its share of the bound, for
    per-phase accounting); ``out`` is the model's output (for the ponder cost)."""
    if t is None:
        t = sample_times(clean.shape[0], generator=generator, device=clean.device)
    noisy, masked = corrupt(clean, t, schedule=schedule, generator=generator)
    out = model(noisy)
    weighted = masked_ce(out.logits, clean, masked) * loss_weight(t.float(), schedule).to(clean.device)[:, None]
    return weighted.sum(1), weighted, out, masked


def unmask_probability(t: float, s: float, schedule: Schedule = "linear") -> float:
    """P(a bit masked at time t is revealed by time s < t) under the forward process."""
    g_t = float(mask_rate(torch.tensor(t, dtype=torch.float64), schedule))
    g_s = float(mask_rate(torch.tensor(max(s, 0.0), dtype=torch.float64), schedule))
    return 1.0 if g_t <= 0 else (g_t - g_s) / g_t


def set_parity(x: torch.Tensor) -> torch.Tensor:
    """Set the parity bit of every frame of ``x`` (B, T) whose eight data bits are all known."""
    B, T = x.shape
    frames = x.reshape(B, T // FRAME_BITS, FRAME_BITS)
    data = frames[..., : FRAME_BITS - 1]
    known = (data != MASK).all(-1)
    parity = data.clamp(max=1).sum(-1) % 2
    frames[..., FRAME_BITS - 1] = torch.where(known, parity, frames[..., FRAME_BITS - 1])
    return x
