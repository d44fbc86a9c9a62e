"""A plain PyTorch causal transformer with BitTransformerLM's dimensions: the throughput baseline.

What "plain" means here: fp32 weights, pre-LN blocks, attention written out by hand
(``q @ k^T / sqrt(d_head)`` + an explicit dense additive causal mask, softmax, ``@ v``), a GELU MLP,
no ``scaled_dot_product_attention``, no fused or compiled paths, no checkpointing. It is what a careful
user would write first, so "ours vs reference" tells what the engine's kernels and memory features buy
or cost at the same model size.

Inputs and outputs match ``BitTransformerLM``: bits (B, T) -> logits (B, T, 2), position t predicting
bit t + 1. The input embedding is the same sum (bit + learned absolute position + phase in the 9-bit
frame; the phase table is 9 x d_model, a lookup, negligible compute), so for a configuration without
ACT the parameter count equals ours exactly and the same FLOP count applies to both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bit_transformer.config import FRAME_BITS, ModelConfig


class ReferenceBlock(nn.Module):
    def __init__(self, d_model: int, nhead: int, ff_dim: int):
        super().__init__()
        self.nhead = nhead
        self.head_dim = d_model // nhead
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ff_dim)
        self.fc2 = nn.Linear(ff_dim, d_model)

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.nhead, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask  # (B, H, T, T), dense
        y = scores.softmax(dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x), mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ReferenceTransformer(nn.Module):
    """bits (B, T) -> logits (B, T, 2); fp32, dense causal mask, no fused kernels."""

    def __init__(self, layers: int, d_model: int, nhead: int, ff_dim: int | None = None, max_seq_len: int = 576):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
        self.max_seq_len = max_seq_len
        self.bit_emb = nn.Embedding(2, d_model)
        self.pos_emb = nn.Embedding(max_seq_len, d_model)
        self.phase_emb = nn.Embedding(FRAME_BITS, d_model)
        self.blocks = nn.ModuleList(ReferenceBlock(d_model, nhead, ff_dim or 4 * d_model) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 2)
        # The explicit additive mask: 0 where key j <= query i, -inf above the diagonal.
        full = torch.full((max_seq_len, max_seq_len), float("-inf")).triu(1)
        self.register_buffer("causal_mask", full, persistent=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    @classmethod
    def like(cls, cfg: ModelConfig) -> ReferenceTransformer:
        """The reference with the dimensions of a BitTransformerLM config (its memory features ignored)."""
        return cls(cfg.layers, cfg.d_model, cfg.nhead, cfg.ff_dim, cfg.max_seq_len)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, bits: torch.Tensor) -> torch.Tensor:
        length = bits.shape[1]
        if length > self.max_seq_len:
            raise ValueError(f"input has {length} bits but max_seq_len is {self.max_seq_len}")
        pos = torch.arange(length, device=bits.device)
        h = self.bit_emb(bits.long()) + self.pos_emb(pos) + self.phase_emb(pos % FRAME_BITS)
        mask = self.causal_mask[:length, :length]
        for block in self.blocks:
            h = block(h, mask)
        return self.head(self.ln_f(h))
