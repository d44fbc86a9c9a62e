"""BitTransformerLM: a transformer that reads bits and predicts the next bit.

Each input position carries three embeddings: the bit itself, its absolute position, and its phase
inside the 9-bit frame (0-7 data bits, 8 = parity). Windows start on frame boundaries, so the
phase of position t is simply t mod 9.

``model.arch='framed'`` builds :class:`framed.FramedBitTransformerLM` instead: one trunk position per
frame, the same blocks and the same per-bit ``forward`` contract.

Blocks are pre-norm; each exposes its two residual branches (``attn_branch``, ``ff_branch``) so that
the stack can run them as ordinary residuals, with activation checkpointing, or as a reversible
coupling (see ``reversible.py``). With ``act`` each block also owns a halting unit (see ``act.py``).

Memory options: ``checkpointing`` recomputes each block in backward (``torch.utils.checkpoint``,
non-reentrant); ``reversible`` recomputes every block's inputs from its outputs. Reversible wins when
both are set: it already stores no per-block activations, so checkpointing is accepted and ignored.
Setting ``model.efficient_backward = False`` runs the very same computation with ordinary autograd
(no checkpointing, no custom backward): the reference the tests compare gradients against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .act import ACTState, HaltingUnit
from .attention import AttentionFacts, AttentionStats, SelfAttention
from .config import FRAME_BITS, ModelConfig
from .reversible import run_stack


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


class Block(nn.Module):
    """Pre-norm transformer block, split into its attention and feed-forward branches."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ff = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.ff_dim),
            nn.GELU(),
            nn.Linear(cfg.ff_dim, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.halt = HaltingUnit(cfg) if cfg.act else None  # ACT: halting probability after this block

    def attn_branch(self, x: torch.Tensor, stats: bool = False, maps: bool = False):
        y, info = self.attn(self.ln1(x), stats=stats, maps=maps)
        return self.drop(y), info

    def ff_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.ff(self.ln2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_branch(x)[0]
        return x + self.ff_branch(x)

    @property
    def residual_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The two linears that write into the residual stream (zeroed to make a block an identity)."""
        return self.attn.out, self.ff[2]


class BitTransformerLM(nn.Module):
    def __new__(cls, cfg: ModelConfig | None = None, *args, **kwargs):
        # BitTransformerLM(cfg) builds the architecture cfg.arch names, so every caller (training,
        # checkpoints, scale-up, INT8, the MCP server) gets a framed model from a framed config.
        if cls is BitTransformerLM and cfg is not None and cfg.arch == "framed":
            from .framed import FramedBitTransformerLM  # local: framed imports this module

            cls = FramedBitTransformerLM
        return super().__new__(cls)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bit_emb = nn.Embedding(2, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.phase_emb = nn.Embedding(FRAME_BITS, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 2)
        self.apply(self._init)
        # GPT-2 style: shrink the projections that add into the residual stream with depth.
        for block in self.blocks:
            for proj in block.residual_projections:
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))
            if block.halt is not None:
                block.halt.reset_parameters()  # _init zeroed its bias
        # False: same computation with ordinary autograd (no checkpointing, no reversible backward).
        self.efficient_backward = True
        self.kv_cache = None  # a ``kv_cache.KVCache`` while decoding
        # Denoising models (causal=false) also read MASK (2), a hidden bit, with a vector of its own. Made
        # last so that a causal and a bidirectional model of one seed share every other initial weight.
        self.mask_emb = None if cfg.causal else nn.Embedding(1, cfg.d_model)
        if self.mask_emb is not None:
            nn.init.normal_(self.mask_emb.weight, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

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
        h = tok + self.pos_emb(pos) + self.phase_emb(pos % FRAME_BITS)
        return self.drop(h)

    def forward(self, bits: torch.Tensor, *, return_telemetry: bool = False) -> ModelOutput:
        """bits (B, T) of 0/1 -> logits (B, T, 2) where position t predicts bit t + 1."""
        h = self.embed(bits)
        record = ForwardTelemetry() if return_telemetry else None
        h, ponder = self._run_blocks(h, record)
        if self.kv_cache is not None:
            self.kv_cache.length += bits.shape[1]
        return ModelOutput(self.head(self.ln_f(h)), ponder, record)

    def _run_blocks(self, h: torch.Tensor, record: ForwardTelemetry | None) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        threshold = cfg.act_threshold if cfg.act else None
        if cfg.reversible:  # reversible wins over checkpointing: it already recomputes every block
            res = run_stack(
                list(self.blocks), h, act_threshold=threshold, stats=record is not None,
                maps=cfg.attn_logging, memory_efficient=self.efficient_backward,
                early_exit=self.kv_cache is None,
            )
            if record is not None:
                record.attention.extend(res.attention)
                record.halting, record.layers_used = res.halting, res.layers_used
            return res.out, res.ponder
        use_ckpt = (
            cfg.checkpointing and self.efficient_backward and self.training and torch.is_grad_enabled()
            and record is None
        )
        act = ACTState(h, cfg.layers, threshold, keep_probs=record is not None) if cfg.act else None
        for layer, block in enumerate(self.blocks):
            if act is not None and not torch.is_grad_enabled() and act.all_halted() and self.kv_cache is None:
                break  # early exit: halted positions are frozen and weighted 0 by every later layer
            if record is not None:
                y, info = block.attn_branch(h, stats=True, maps=cfg.attn_logging)
                record.attention.append(info)
                out = h + y
                out = out + block.ff_branch(out)
            elif use_ckpt:
                out = checkpoint(block, h, use_reentrant=False)
            else:
                out = block(h)
            if act is not None:
                out = torch.where(act.running.unsqueeze(-1), out, h)  # halted positions stop updating
                act.step(layer, out, block.halt(out))
            h = out
        if act is None:
            return h, h.new_zeros(())
        if record is not None:
            record.halting, record.layers_used = act.halting_telemetry()
        return act.acc, act.ponder()

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
