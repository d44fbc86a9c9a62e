"""BitTransformerLM: a transformer that reads bits and predicts the next bit.

Each input position carries the bit's embedding and its phase inside the 9-bit frame (0-7 data bits,
8 = parity); classic blocks add a learned absolute position, modern blocks rotate queries and keys by it
instead (``block.py``). Windows start on frame boundaries, so the phase of position t is simply t mod 9.

Build models with :func:`factory.build_model`: ``model.arch='framed'`` gives
:class:`framed.FramedBitTransformerLM` (one trunk position per frame, the same block stack and the same
per-bit ``forward`` contract). Both own a :class:`block.BlockStack` (the blocks and the final norm) and share
its initialisation (``block.init_weights``).

Memory options: ``checkpointing`` recomputes each block in backward (``torch.utils.checkpoint``,
non-reentrant); ``reversible`` recomputes every block's inputs from its outputs. Reversible wins when
both are set: it already stores no per-block activations, so checkpointing is accepted and ignored.
Setting ``model.efficient_backward = False`` runs the very same computation with ordinary autograd
(no checkpointing, no custom backward): the reference the tests compare gradients against.

Checkpoints written before the stack existed (keys ``blocks.N.ff.0``, ``ln_f``, ...) load unchanged: a
``load_state_dict`` pre-hook renames their keys (``block.upgrade_key``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from .attention import AttentionFacts, AttentionStats
from .block import BlockStack, init_weights, upgrade_state_dict_hook
from .config import FRAME_BITS, ModelConfig


@dataclass
class ForwardTelemetry:
    """Raw per-forward measurements; ``telemetry.summarize`` turns them into K/C/S and friends."""

    attention: list[AttentionStats] = field(default_factory=list)  # one per layer
    halting: torch.Tensor | None = None  # ACT: (B, T, layers) halting probability (0 after the halt)
    layers_used: torch.Tensor | None = None  # ACT: (B, T) layers each position computed (float)


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, 2): next-bit logits
    ponder_cost: torch.Tensor  # scalar, unscaled mean of N + R; zero without ACT. Loss adds ponder_weight * it
    telemetry: ForwardTelemetry | None


class BitTransformerLM(nn.Module):
    """The flat model (one position per bit). Subclasses replace the input side (``_build_inputs``) and
    the output width (``OUTPUTS``); the stack, head and initialisation are shared."""

    ARCH = "flat"
    OUTPUTS = 2  # next-bit logits

    def __init__(self, cfg: ModelConfig):
        if cfg.arch != self.ARCH:
            raise ValueError(f"{type(self).__name__} is the arch={self.ARCH!r} model but the config says "
                             f"arch={cfg.arch!r}: build models with bit_transformer.factory.build_model(cfg)")
        super().__init__()
        self.cfg = cfg
        self._build_inputs(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.stack = BlockStack(self.stack_config(cfg))
        self.head = nn.Linear(cfg.d_model, self.OUTPUTS, bias=cfg.block == "classic")
        init_weights(self, self.stack)
        # False: same computation with ordinary autograd (no checkpointing, no reversible backward).
        self.efficient_backward = True
        self.kv_cache = None  # a ``kv_cache.KVCache`` while decoding
        self._finish_inputs(cfg)
        self.register_load_state_dict_pre_hook(upgrade_state_dict_hook)

    @staticmethod
    def stack_config(cfg: ModelConfig) -> ModelConfig:
        """The config the blocks are built from (framed: chunk sizes in frames)."""
        return cfg

    def _build_inputs(self, cfg: ModelConfig) -> None:
        self.bit_emb = nn.Embedding(2, cfg.d_model)
        # modern blocks carry positions in rotary q/k: no learned absolute table
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model) if cfg.block == "classic" else None
        self.phase_emb = nn.Embedding(FRAME_BITS, cfg.d_model)

    def _finish_inputs(self, cfg: ModelConfig) -> None:
        # Denoising models (causal=false) also read MASK (2), a hidden bit, with a vector of its own. Made
        # last so that a causal and a bidirectional model of one seed share every other initial weight.
        self.mask_emb = None if cfg.causal else nn.Embedding(1, cfg.d_model)
        if self.mask_emb is not None:
            nn.init.normal_(self.mask_emb.weight, std=0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.stack.blocks

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, bits: torch.Tensor) -> torch.Tensor:
        length = bits.shape[1]
        offset = self.kv_cache.length if self.kv_cache is not None else 0  # decoding: positions after the cache
        if offset + length > self.cfg.max_seq_len:
            raise ValueError(f"input has {offset + length} bits but max_seq_len is {self.cfg.max_seq_len}")
        pos = torch.arange(offset, offset + length, device=bits.device)
        bits = bits.long()
        if self.mask_emb is None:
            tok = self.bit_emb(bits)
        else:  # MASK positions take the mask vector; their (unknown) bit value never enters
            hidden = (bits == 2).unsqueeze(-1)
            tok = torch.where(hidden, self.mask_emb.weight[0], self.bit_emb(bits.clamp(max=1)))
        h = tok if self.pos_emb is None else tok + self.pos_emb(pos)
        return self.drop(h + self.phase_emb(pos % FRAME_BITS))

    def run_stack(self, h: torch.Tensor, record: ForwardTelemetry | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The block stack and final norm on embedded positions (B, T, D); counts them into the KV cache."""
        caching = self.kv_cache is not None
        h, ponder = self.stack(h, record, efficient_backward=self.efficient_backward, caching=caching)
        if caching:
            self.kv_cache.length += h.shape[1]
        return h, ponder

    def forward(self, bits: torch.Tensor, *, return_telemetry: bool = False) -> ModelOutput:
        """bits (B, T) of 0/1 -> logits (B, T, 2) where position t predicts bit t + 1."""
        record = ForwardTelemetry() if return_telemetry else None
        h, ponder = self.run_stack(self.embed(bits), record)
        return ModelOutput(self.head(h), ponder, record)

    def attention_facts(self) -> list[AttentionFacts]:
        """How each layer computed attention in the last forward (backend, is_causal, masks)."""
        return [block.attn.facts for block in self.blocks]

    def forward_compressed(self, rows, **kw) -> ModelOutput:
        """Forward on RLE-compressed rows (``compression.compress_bits`` streams, a list or a 2-D tensor).

        The rows are decoded losslessly first, so the logits equal ``self(raw_bits, **kw)``; every row
        must decode to the same length.
        """
        from .compression import decompress_batch  # local: compression imports bits, keep model import-light

        device = next(self.parameters()).device
        return self(decompress_batch(rows).to(device), **kw)
