"""The training objective of one micro-batch, and the trainer's quick validation loss.

Loss = next-bit cross-entropy (nats per bit)
     + ``model.cfg.ponder_weight`` x ACT ponder cost (zero without ACT)
     + ``telemetry_loss(logits, bits, lambda_K, lambda_C, lambda_S)`` when any lambda > 0.
With a teacher (``train.teacher``, see ``distill``) the cross-entropy term becomes
``distill_weight x KL(teacher || student) + (1 - distill_weight) x CE``.

Compression ramp (playbook task 6): each sample of a micro-batch is, with probability ``p``, trained on
its run-length-compressed serialization (``compression.compress_batch``) instead of its raw bits.
Compressed rows differ in length: each is cut to ``seq_len + 1`` bits, right-padded with zeros, and the
padded positions are masked out of the loss. Raw and compressed cross-entropies are returned separately;
the micro-batch loss weights each part by its number of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .config import TrainConfig
from .device import autocast

if TYPE_CHECKING:
    from .distill import Teacher

LN2 = math.log(2.0)


@dataclass
class LossParts:
    loss: torch.Tensor  # differentiable total of this micro-batch
    raw_ce: float | None  # mean CE of raw samples (None when all were compressed)
    compressed_ce: float | None  # mean CE of compressed samples (None when none were)
    ponder: float
    n_raw: int
    n_compressed: int
    kl: float | None = None  # distillation: KL(teacher || student) of the raw rows, nats per bit


def _ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    if mask is None:
        return flat.mean()
    m = mask.reshape(-1).float()
    return (flat * m).sum() / m.sum().clamp_min(1.0)


def compressed_rows(inputs: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, mask) for training on the RLE streams of ``inputs`` rows: y is x shifted by one bit."""
    from .compression import compress_batch  # lazy: only the compression ramp needs it

    streams = [torch.as_tensor(s).reshape(-1).long()[: seq_len + 1] for s in compress_batch(inputs.cpu())]
    width = max(1, max(len(s) - 1 for s in streams))
    x = torch.zeros(len(streams), width, dtype=torch.long)
    y = torch.zeros_like(x)
    mask = torch.zeros(len(streams), width, dtype=torch.bool)
    for i, s in enumerate(streams):
        n = len(s) - 1
        if n > 0:
            x[i, :n], y[i, :n], mask[i, :n] = s[:-1], s[1:], True
    return x.to(inputs.device), y.to(inputs.device), mask.to(inputs.device)


def micro_batch_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, cfg: TrainConfig,
                     ponder_weight: float, compress: np.ndarray | None, precision: str,
                     teacher: Teacher | None = None) -> LossParts:
    """Loss of one micro-batch; ``compress`` is a bool per row (True: train on the compressed form)."""
    if cfg.objective == "denoise":
        return denoise_batch_loss(model, inputs, cfg=cfg, ponder_weight=ponder_weight, precision=precision)
    device = inputs.device
    B = inputs.shape[0]
    rows = torch.as_tensor(compress, device=device) if compress is not None and compress.any() else None
    parts: list[tuple[torch.Tensor, int]] = []
    raw_ce = comp_ce = kl = None
    ponder = torch.zeros((), device=device)
    n_comp = int(rows.sum()) if rows is not None else 0
    n_raw = B - n_comp
    with autocast(device, precision):
        if n_raw:
            x, y = (inputs, targets) if rows is None else (inputs[~rows], targets[~rows])
            out = model(x)
            ce = _ce(out.logits, y)
            raw_ce = float(ce.detach())
            term = ce
            if teacher is not None:
                term, kl = teacher.mix(x, out.logits, ce, cfg)
            if cfg.lambda_K or cfg.lambda_C or cfg.lambda_S:
                from .telemetry import telemetry_loss  # lazy: only when a lambda is set

                term = term + telemetry_loss(out.logits, y, cfg.lambda_K, cfg.lambda_C, cfg.lambda_S, aligned=True)
            parts.append((term, n_raw))
            ponder = ponder + out.ponder_cost.float() * n_raw / B
        if n_comp:
            x, y, mask = compressed_rows(inputs[rows], inputs.shape[1])
            out = model(x)
            ce = _ce(out.logits, y, mask)
            comp_ce = float(ce.detach())
            parts.append((ce, n_comp))
            ponder = ponder + out.ponder_cost.float() * n_comp / B
    loss = sum(t * (n / B) for t, n in parts) + ponder_weight * ponder
    return LossParts(loss, raw_ce, comp_ce, float(ponder.detach()), n_raw, n_comp, kl)


def denoise_batch_loss(model: torch.nn.Module, inputs: torch.Tensor, *, cfg: TrainConfig, ponder_weight: float,
                       precision: str, generator: torch.Generator | None = None) -> LossParts:
    """The denoising objective of one micro-batch: its NELBO in nats per bit position (see ``diffusion``).

    Each row gets its own diffusion time (stratified over the batch) and mask; the targets are the clean
    inputs themselves, so ``targets`` (the next-bit shift) is not used."""
    from .diffusion import nelbo

    with autocast(inputs.device, precision):
        per_row, _, out, _ = nelbo(model, inputs, schedule=cfg.diffusion_schedule, generator=generator)
    ce = per_row.sum() / inputs.numel()
    ponder = out.ponder_cost.float()
    return LossParts(ce + ponder_weight * ponder, float(ce.detach()), None, float(ponder.detach()), inputs.shape[0], 0)


def eval_indices(n_windows: int, n_samples: int) -> list[int]:
    """A fixed, evenly spread subset of validation windows, identical at every evaluation."""
    if n_windows <= n_samples:
        return list(range(n_windows))
    return sorted({round(float(i)) for i in np.linspace(0, n_windows - 1, n_samples)})


@torch.no_grad()
def validation_loss(model: torch.nn.Module, dataset: Dataset, indices: list[int], batch_size: int,
                    device: torch.device, precision: str, *, objective: str = "next_bit",
                    schedule: str = "linear") -> float:
    """Mean next-bit CE (nats per bit) over ``indices`` of ``dataset``; bpb = loss * 9 / ln 2.

    ``objective='denoise'``: the NELBO per bit position instead, with the same noise at every validation
    (a fixed generator), so successive figures differ only by the model."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    noise = torch.Generator().manual_seed(0)
    try:
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            x = torch.stack([a for a, _ in items]).to(device)
            y = torch.stack([b for _, b in items]).to(device)
            if objective == "denoise":
                from .diffusion import nelbo

                with autocast(device, precision):
                    per_row = nelbo(model, x, schedule=schedule, generator=noise)[0]  # type: ignore[arg-type]
                total += float(per_row.sum())
                count += x.numel()
                continue
            with autocast(device, precision):
                logits = model(x).logits
            ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            total += float(ce)
            count += y.numel()
    finally:
        model.train(was_training)
    return total / max(1, count)
