"""The framed BitTransformerLM (``model.arch='framed'``): one trunk position per 9-bit frame, bits in and bits out.

Bits in. Frame k (bits 9k..9k+8: eight data bits, most significant first, then even parity) is embedded from
its nine bit values by a small MLP (the model never sees a byte id), plus a learned frame position. The trunk
is the engine's own ``BlockStack`` (causal SDPA, chunks, reversible, ACT, checkpointing, compile and INT8
all apply) over ``[start, frame 0, ..., frame n-1]``: its input is shifted by one frame behind a learned start
vector, so trunk state k has seen frames 0..k-1 only. Chunk sizes and overlaps are given in bits like the flat
model's and must be whole frames; the trunk uses them divided by 9.

Bits out, exactly. State k gives logits z over the 256 data bytes of frame k. The conditional of data bit j
given the bits before it is a ratio of sums of that distribution: with ``L_m[p] = logsumexp`` of z over the
bytes whose top m bits are p (a tree of pairwise log-sum-exps, ``L_8 = z``),

    P(b_j = v | b_0..b_{j-1} = prefix p) = exp(L_{j+1}[2p + v] - L_j[p]),

so the per-bit logits are the pair (L_{j+1}[2p], L_{j+1}[2p + 1]) and the eight data-bit losses of a frame
telescope to exactly -log softmax(z)[byte]. The parity bit is a function of the eight data bits: its logits
are +-``PARITY_LOGIT`` (cross-entropy ~1e-14 nats), with no parameters.

Same contract as the flat model: ``forward(bits)`` takes (B, T) bits whose first bit starts a frame and returns
(B, T, 2) logits where position t predicts bit t + 1. Position 9k + 8 (the parity bit of frame k) predicts bit
0 of frame k + 1 from state k + 1, so a window of n whole frames runs n + 1 trunk positions. Inputs that end
inside a frame are fine (its bits only enter as prefixes). The trunk runs ~9x fewer positions than the flat
model for the same window, which is where the speed comes from.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FRAME_BITS, ModelConfig
from .model import BitTransformerLM, ForwardTelemetry, ModelOutput

DATA_BITS = FRAME_BITS - 1
BYTES = 1 << DATA_BITS
PARITY_LOGIT = 16.0  # CE of the right parity bit: log(1 + e^-32) ~ 1e-14 nats


def trunk_config(cfg: ModelConfig) -> ModelConfig:
    """The block config over frames: chunk and overlap in frames (validated as bit multiples of 9)."""
    return cfg.model_copy(update={
        "chunk_size": None if cfg.chunk_size is None else cfg.chunk_size // FRAME_BITS,
        "overlap": cfg.overlap // FRAME_BITS,
        "max_seq_len": cfg.max_seq_len // FRAME_BITS + 1,
    })


def prefix_levels(z: torch.Tensor) -> list[torch.Tensor]:
    """[L_1, ..., L_8] for byte logits z (..., 256): L_m (..., 2^m) log-sums over bytes sharing m top bits."""
    levels = [z]
    for _ in range(DATA_BITS - 1):
        top = levels[-1]
        levels.append(top.reshape(*top.shape[:-1], top.shape[-1] // 2, 2).logsumexp(-1))
    return levels[::-1]


def frame_bit_logits(z: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Per-bit logits (..., 9, 2) of frames (..., 9) of 0/1 under byte logits z (..., 256) in float32.

    Entry j is the next-bit conditional of bit j given bits 0..j-1 of the same frame (it never reads bit j
    or later); entry 8 is the deterministic parity bit."""
    z = z.float()
    frames = frames.long()
    levels = prefix_levels(z)
    out = []
    prefix = torch.zeros_like(frames[..., 0])
    for j in range(DATA_BITS):
        pairs = levels[j].reshape(*z.shape[:-1], 1 << j, 2)  # level j+1 grouped by the j-bit prefix
        out.append(pairs.gather(-2, prefix[..., None, None].expand(*prefix.shape, 1, 2)).squeeze(-2))
        prefix = prefix * 2 + frames[..., j]
    parity = frames[..., :DATA_BITS].sum(-1) % 2
    one = (2.0 * parity.float() - 1.0) * PARITY_LOGIT
    out.append(torch.stack([-one, one], dim=-1))
    return torch.stack(out, dim=-2)


class FramedBitTransformerLM(BitTransformerLM):
    """Built by ``factory.build_model(cfg)`` when ``cfg.arch == 'framed'``: the flat model's stack, head and
    initialisation, with frames in (``frame_in``, ``start``) and byte logits out."""

    OUTPUTS = BYTES
    ARCH = "framed"

    def __init__(self, cfg: ModelConfig):
        if cfg.max_seq_len % FRAME_BITS:
            raise ValueError(f"arch='framed' needs max_seq_len to be a multiple of {FRAME_BITS}")
        super().__init__(cfg)

    stack_config = staticmethod(trunk_config)

    def _build_inputs(self, cfg: ModelConfig) -> None:
        D, bias = cfg.d_model, cfg.block == "classic"
        self.frame_in = nn.Sequential(nn.Linear(FRAME_BITS, D, bias=bias), nn.GELU(),
                                      nn.Linear(D, D, bias=bias))  # the nine bits
        self.start = nn.Parameter(torch.empty(D))
        frames = trunk_config(cfg).max_seq_len
        self.pos_emb = nn.Embedding(frames, D) if cfg.block == "classic" else None  # modern: rotary

    def _finish_inputs(self, cfg: ModelConfig) -> None:
        self.mask_emb = None  # framed models are causal only (no denoising MASK input)

    def trunk(self, frames: torch.Tensor, *, start: bool, record: ForwardTelemetry | None = None):
        """Byte logits (B, n [+1], 256) for whole frames (B, n, 9), ``start`` prepending the start frame.

        With a KV cache the positions continue after the cached ones (decoding: one frame per call)."""
        B = frames.shape[0]
        # the residual stream stays in the parameters' dtype under autocast (as the flat model's embeddings)
        x = self.frame_in(frames.to(self.start.dtype) * 2.0 - 1.0).to(self.start.dtype)
        if start:
            x = torch.cat([self.start.to(x.dtype).expand(B, 1, -1), x], dim=1)
        offset = self.kv_cache.length if self.kv_cache is not None else 0
        n = x.shape[1]
        if offset + n > self.stack.cfg.max_seq_len:
            bits = (offset + n - 1) * FRAME_BITS
            raise ValueError(f"input has {bits} bits but max_seq_len is {self.cfg.max_seq_len}")
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(offset, offset + n, device=frames.device))
        h, ponder = self.run_stack(self.drop(x), record)
        return self.head(h), ponder

    def forward(self, bits: torch.Tensor, *, return_telemetry: bool = False) -> ModelOutput:
        """bits (B, T) of 0/1 -> logits (B, T, 2) where position t predicts bit t + 1 (as the flat model)."""
        B, length = bits.shape
        if length > self.cfg.max_seq_len:
            raise ValueError(f"input has {length} bits but max_seq_len is {self.cfg.max_seq_len}")
        n = length // FRAME_BITS
        bits = bits.long()
        record = ForwardTelemetry() if return_telemetry else None
        z, ponder = self.trunk(bits[:, : n * FRAME_BITS].reshape(B, n, FRAME_BITS), start=True, record=record)
        padded = torch.nn.functional.pad(bits, (0, (n + 1) * FRAME_BITS - length)).reshape(B, n + 1, FRAME_BITS)
        logits = frame_bit_logits(z, padded).reshape(B, (n + 1) * FRAME_BITS, 2)
        return ModelOutput(logits[:, 1 : length + 1], ponder, record)
