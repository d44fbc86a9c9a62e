"""Bits per byte of a denoising model: a Monte Carlo estimate of its NELBO, an upper bound.

The stream is cut into frame-aligned windows of ``seq_len`` bits (the last one may be shorter); each
window is scored ``samples`` times at stratified diffusion times, with a fixed generator so that the
same model on the same text always gets the same figure. ``bits_per_byte`` is the mean bound per byte
/ ln 2; it bounds the code length of coding each window on its own, so it is comparable with (and
expected above) a causal model's exact next-bit figure. Parity bits cost 0: they follow from the data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .config import FRAME_BITS
from .diffusion import nelbo

LN2 = math.log(2.0)


def score_windows(model: torch.nn.Module, arr: np.ndarray, L: int, *, samples: int, batch_size: int,
                  device: torch.device, autocast, seed: int = 0) -> dict[str, torch.Tensor | float]:
    """Sum the NELBO (nats) over every window, averaged over ``samples`` noise draws per window.

    Returns per-phase sums of the bound and counts of masked-bit predictions (for ``loss_by_phase``),
    right predictions among masked bits, and the total."""
    gen = torch.Generator().manual_seed(seed)
    phase_sum = torch.zeros(FRAME_BITS, dtype=torch.float64)
    right = torch.zeros(FRAME_BITS, dtype=torch.float64)
    seen = torch.zeros(FRAME_BITS, dtype=torch.float64)
    total = 0.0
    starts = list(range(0, arr.size, L))
    groups = [starts[i : i + batch_size] for i in range(0, len(starts), batch_size)]
    for group in groups:
        by_len: dict[int, list[int]] = {}
        for s in group:
            by_len.setdefault(min(L, arr.size - s), []).append(s)
        for n, ss in by_len.items():
            w = torch.from_numpy(np.stack([arr[s : s + n] for s in ss]).astype(np.int64)).to(device)
            rows = w.repeat_interleave(samples, 0)
            with autocast:
                per_row, weighted, out, masked = nelbo(model, rows, generator=gen)
            total += float(per_row.double().sum()) / samples
            phase = (torch.arange(n) % FRAME_BITS).expand(rows.shape[0], n)
            m = masked.cpu()
            phase_sum.index_add_(0, phase[m], weighted.detach().double().cpu()[m] / samples)
            ok = (out.logits.argmax(-1).cpu() == rows.cpu()) & m
            right.index_add_(0, phase[m], ok[m].double())
            seen.index_add_(0, phase[m], torch.ones(int(m.sum()), dtype=torch.float64))
    return {"total": total, "phase_sum": phase_sum, "right": right, "seen": seen}

