"""A byte-level causal transformer with the bit model's parameter count: the quality baseline.

The blocks are BitTransformerLM's own (``bit_transformer.block.BlockStack``: pre-LN, SDPA causal attention,
GELU MLP, the same initialisation), so the two models differ only where the bit-level choice lives:
the byte model embeds one of 256 byte values per position (+ a learned position) and predicts the next
byte with a 256-way head, the bit model embeds one bit per position and predicts the next bit. Depth
and heads are the bit model's; the width is chosen by :func:`match_width` so that the parameter counts
agree within a few percent (the byte model's 256-row embedding and head cost parameters the bit model
spends on width). Its context, in bytes, is what the bit model's window covers (144 bits -> 16 bytes).

:func:`evaluate_bytes` scores a byte stream exactly like ``evaluate.evaluate_bits`` scores bits:
overlapping windows, every byte but the first scored once, each scored byte seeing at least
``min_context`` bytes before it (except in the first window), cross-entropy in bits per byte.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bit_transformer.block import BlockStack, init_weights
from bit_transformer.config import ModelConfig
from bit_transformer.evaluate import window_starts

VOCAB = 256


class ByteTransformer(nn.Module):
    """bytes (B, T) of 0..255 -> logits (B, T, 256), position t predicting byte t + 1."""

    def __init__(self, layers: int, d_model: int, nhead: int, context: int, ff_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        # A ModelConfig only to build the bit model's Block (full causal attention, no memory features).
        self.cfg = ModelConfig(layers=layers, d_model=d_model, nhead=nhead, dim_feedforward=ff_dim,
                               max_seq_len=max(context, 9), dropout=dropout, full_attn_logging=False)
        self.context = context
        self.tok_emb = nn.Embedding(VOCAB, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.stack = BlockStack(self.cfg)
        self.head = nn.Linear(d_model, VOCAB)
        init_weights(self, self.stack)  # the bit model's initialisation (GPT-2 style residual scaling)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        if length > self.context:
            raise ValueError(f"input has {length} bytes but the context is {self.context}")
        h = self.drop(self.tok_emb(x.long()) + self.pos_emb(torch.arange(length, device=x.device)))
        return self.head(self.stack(h)[0])


def byte_params(layers: int, d_model: int, context: int, ff_dim: int | None = None) -> int:
    """Parameter count of a ByteTransformer, without building it."""
    d, ff = d_model, ff_dim or 4 * d_model
    per_block = 4 * d * d + 4 * d + 2 * d * ff + ff + d + 4 * d  # qkv+out (+biases), MLP, two LayerNorms
    return VOCAB * d + context * d + layers * per_block + 2 * d + d * VOCAB + VOCAB


def match_width(target: int, layers: int, nhead: int, context: int) -> tuple[int, float]:
    """The width (a multiple of nhead, MLP 4x) whose byte model is closest to ``target`` parameters.

    Returns (d_model, relative difference)."""
    best = min(range(nhead, 4097, nhead), key=lambda d: abs(byte_params(layers, d, context) - target))
    return best, byte_params(layers, best, context) / target - 1.0


def matched_byte_model(bit_cfg: ModelConfig, bit_params: int) -> tuple[ByteTransformer, float]:
    """The byte baseline for a bit model: same depth and heads, width matched, context = window bytes."""
    context = bit_cfg.max_seq_len // 9
    d, diff = match_width(bit_params, bit_cfg.layers, bit_cfg.nhead, context)
    return ByteTransformer(bit_cfg.layers, d, bit_cfg.nhead, context, dropout=bit_cfg.dropout), diff


@torch.inference_mode()
def evaluate_bytes(model: ByteTransformer, data: np.ndarray, *, min_context: int, batch_size: int = 64,
                   max_bytes: int | None = None) -> dict:
    """Bits per byte of ``data`` (uint8) under ``model``; scoring as in ``evaluate.evaluate_bits``.

    Window k reads bytes [s_k, s_k + context); position p predicts byte s_k + p + 1. After the first window
    only positions p >= min_context - 1 are scored, so each scored byte has >= min_context bytes before it.
    """
    arr = np.asarray(data, dtype=np.uint8).reshape(-1)
    if max_bytes is not None:
        arr = arr[:max_bytes]
    L, skip = model.context, min_context - 1
    if not 0 <= skip < L:
        raise ValueError(f"min_context must be in [1, {L}], got {min_context}")
    n = arr.size
    starts = window_starts(n, L, skip)
    was_training = model.training
    model.eval()
    ce_sum, count = 0.0, 0
    try:
        full = [s for s in starts if s + L < n]
        tail = [s for s in starts if s + L >= n]
        groups = [np.asarray(full[i:i + batch_size]) for i in range(0, len(full), batch_size)]
        for group in [*groups, *([np.asarray(tail)] if tail else [])]:
            if group.size == 0:
                continue
            width = min(L, n - 1 - int(group.max())) if group.max() + L >= n else L
            w = torch.from_numpy(arr[group[:, None] + np.arange(width + 1)[None, :]].astype(np.int64))
            logits = model(w[:, :-1]).float()
            ce = F.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1), reduction="none").view(len(group), -1)
            first = torch.tensor([0 if s == 0 else skip for s in group])
            keep = torch.arange(width)[None, :] >= first[:, None]
            ce_sum += float(ce[keep].double().sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return {"bits_per_byte": ce_sum / max(count, 1) / math.log(2), "n_bytes": n, "n_predictions": count}
