"""Multi-head self-attention through ``F.scaled_dot_product_attention``, full or chunked.

With ``model.block='modern'`` queries and keys are RMS-normalised per head (QK-norm, learned gains
``q_norm``/``k_norm``) and then rotated by their absolute position (rotary embeddings, dim pairs turned as
complex numbers); a KV-cache step rotates the new position by its index in the cache, so cached and uncached
decoding agree.

Full attention passes ``is_causal`` and no mask, which lets PyTorch pick its fused kernels (playbook
task 9). Chunked attention splits the sequence into chunks of ``chunk_size`` bits; each query sees
its own chunk plus the ``overlap`` positions before it (causally when ``causal``). All chunks run in
one SDPA call over a (chunks x chunk x window) layout; the boolean masks it needs are built once per
shape and served from :data:`MASK_CACHE` (task 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


class MaskCache:
    """Boolean attention masks keyed by everything that shapes them; counts hits and misses."""

    def __init__(self) -> None:
        self._masks: dict[tuple, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, build) -> torch.Tensor:
        mask = self._masks.get(key)
        if mask is None:
            self.misses += 1
            mask = self._masks[key] = build()
        else:
            self.hits += 1
        return mask

    def clear(self) -> None:
        self._masks.clear()
        self.hits = self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._masks)}


MASK_CACHE = MaskCache()


def dense_chunk_mask(T: int, chunk_size: int | None, overlap: int, causal: bool, device=None) -> torch.Tensor:
    """(T, T) bool, True where query i may attend to key j. The reference for chunked attention."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    allowed = torch.ones(T, T, dtype=torch.bool, device=device)
    if chunk_size is not None:
        start = (i // chunk_size) * chunk_size
        allowed &= (j >= (start - overlap).clamp(min=0)) & (j < start + chunk_size)
    if causal:
        allowed &= j <= i
    return allowed


def _window_mask(T: int, chunk: int, overlap: int, causal: bool, device) -> torch.Tensor:
    """(n_chunks, chunk, overlap + chunk) bool for the padded, unfolded layout used below."""
    n = math.ceil(T / chunk)
    c = torch.arange(n, device=device)[:, None, None]
    r = torch.arange(chunk, device=device)[None, :, None]
    w = torch.arange(overlap + chunk, device=device)[None, None, :]
    q_pos = c * chunk + r
    k_pos = c * chunk - overlap + w
    allowed = ((k_pos >= 0) & (k_pos < T)).expand(n, chunk, overlap + chunk)
    if causal:
        allowed = allowed & (k_pos <= q_pos)
    return allowed.contiguous()


ROPE_BASE = 10000.0


def rotary(x: torch.Tensor, offset: int = 0, seq_dim: int = -2) -> torch.Tensor:
    """Rotate x (..., E) by positions offset..offset+T-1 along ``seq_dim``: the dim pair (2i, 2i+1) is a complex
    number turned by angle pos * ROPE_BASE^(-2i/E). One complex multiply (several times cheaper on CPU than the
    half-split form); computed in at least float32 and returned in x's dtype."""
    T, E = x.shape[seq_dim], x.shape[-1]
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    inv_freq = ROPE_BASE ** (-torch.arange(0, E, 2, device=x.device, dtype=work.dtype) / E)
    angle = torch.arange(offset, offset + T, device=x.device, dtype=work.dtype)[:, None] * inv_freq
    shape = [1] * x.dim()
    shape[seq_dim], shape[-1] = T, E // 2
    cis = torch.polar(torch.ones_like(angle), angle).view(shape)
    turned = torch.view_as_complex(work.contiguous().reshape(*x.shape[:-1], E // 2, 2)) * cis
    return torch.view_as_real(turned).flatten(-2).to(x.dtype)


@dataclass
class AttentionFacts:
    """How the last forward computed attention; read by checks and the MCP server."""

    backend: str = "sdpa"
    is_causal: bool = False
    dense_mask: bool = False
    chunked: bool = False


@dataclass
class LayerKV:
    """One layer's cached keys and values (B, H, T, head_dim) while decoding; None before the prefill."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


@dataclass
class AttentionStats:
    """Telemetry of one attention layer: per-head entropy (bits) and, when logged, full maps."""

    entropy: torch.Tensor  # (H,)
    maps: torch.Tensor | None = None  # (B, H, T, T)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.nhead = cfg.nhead
        self.head_dim = cfg.head_dim
        self.causal = cfg.causal
        self.chunk_size = cfg.chunk_size
        self.overlap = cfg.overlap
        self.dropout = cfg.attn_dropout  # not cfg.dropout: > 0 takes CPU SDPA off its fused kernel
        bias = cfg.block == "classic"
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=bias)
        modern = cfg.block == "modern"
        self.q_norm = nn.RMSNorm(cfg.head_dim) if modern else None
        self.k_norm = nn.RMSNorm(cfg.head_dim) if modern else None
        self.rotary = modern
        self.facts = AttentionFacts()
        self.kv: LayerKV | None = None  # set by ``kv_cache.kv_cache`` while decoding

    def forward(
        self, x: torch.Tensor, *, stats: bool = False, maps: bool = False
    ) -> tuple[torch.Tensor, AttentionStats | None]:
        """x (B, T, D) -> (output (B, T, D), per-head statistics when ``stats`` or ``maps``).

        ``maps`` adds full (B, H, T, T) attention maps (stitched from chunks when chunked). The
        statistics recompute attention weights explicitly, so they cost extra: ask only for telemetry.
        """
        B, T, D = x.shape
        kv = self.kv
        q, k, v = self.project(x, 0 if kv is None or kv.k is None else kv.k.shape[2])
        if kv is not None and kv.k is not None:  # a decoding step: the new position against the cache
            return self.out(self._cached_step(kv, q, k, v).transpose(1, 2).reshape(B, T, D)), None
        if kv is not None:  # prefill: attend as usual and keep this call's keys and values
            kv.k, kv.v = k, v
        p = self.dropout if self.training else 0.0
        if self.chunk_size is None or self.chunk_size >= T:  # one chunk is full attention
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
            self.facts = AttentionFacts(is_causal=self.causal)
            info = self._full_stats(q, k, maps) if stats or maps else None
        else:
            y, info = self._chunked(q, k, v, p, stats or maps, maps)
        return self.out(y.transpose(1, 2).reshape(B, T, D)), info

    def project(self, x: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> q, k, v (B, H, T, head_dim) as attention uses them (QK-norm and rotary applied,
        positions starting at ``offset``)."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.nhead, self.head_dim)
        qk, v = qkv[:, :, :2], qkv[:, :, 2].transpose(1, 2)
        # q and k together (B, T, 2, H, E): one norm, one multiply by their gains, one rotation
        if self.q_norm is not None:
            gains = torch.stack([self.q_norm.weight, self.k_norm.weight])[:, None].to(qk.dtype)
            qk = F.rms_norm(qk, (self.head_dim,), eps=self.q_norm.eps) * gains
        if self.rotary:
            qk = rotary(qk, offset, seq_dim=1)
        q, k = qk.permute(2, 0, 3, 1, 4)
        return q, k, v

    def _cached_step(self, kv: LayerKV, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """New positions (causal) against every cached key each may see: its chunk and ``overlap`` before it.

        Exactly the keys the full forward allows for those positions; one new position needs no mask."""
        if not self.causal:
            raise ValueError("a KV-cache step needs a causal model")
        first = kv.k.shape[2]  # absolute index of the first new position
        kv.k, kv.v = torch.cat([kv.k, k], dim=2), torch.cat([kv.v, v], dim=2)
        total = kv.k.shape[2]
        if q.shape[2] == 1:
            t = total - 1
            lo = 0 if self.chunk_size is None else max(0, (t // self.chunk_size) * self.chunk_size - self.overlap)
            return F.scaled_dot_product_attention(q, kv.k[:, :, lo:], kv.v[:, :, lo:])
        i = torch.arange(first, total, device=q.device)[:, None]
        j = torch.arange(total, device=q.device)[None, :]
        allowed = j <= i
        if self.chunk_size is not None:
            allowed &= j >= (i // self.chunk_size) * self.chunk_size - self.overlap
        return F.scaled_dot_product_attention(q, kv.k, kv.v, attn_mask=allowed)

    def _full_stats(self, q: torch.Tensor, k: torch.Tensor, want_maps: bool) -> AttentionStats:
        # Explicit weights only for telemetry; the training path above never builds a dense mask.
        T = q.shape[2]
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        if self.causal:
            key = ("dense", T, None, 0, True, str(q.device))
            mask = MASK_CACHE.get(key, lambda: dense_chunk_mask(T, None, 0, True, q.device))
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return AttentionStats(entropy=_row_entropy(weights).mean(dim=(0, 2)), maps=weights if want_maps else None)

    def _chunked(self, q, k, v, p: float, want_stats: bool, want_maps: bool):
        B, H, T, E = q.shape
        C, ov = self.chunk_size, self.overlap
        n = math.ceil(T / C)
        pad = n * C - T
        W = ov + C
        # Keys/values padded by `overlap` on the left and to whole chunks on the right, then cut into
        # overlapping windows of W = overlap + chunk positions, one window per chunk.
        qc = F.pad(q, (0, 0, 0, pad)).view(B, H, n, C, E)
        if self.causal and ov == 0:
            # Causal chunks without overlap are independent square causal blocks: fold the chunks into
            # the head dimension and let SDPA use is_causal with no mask at all (its fused kernels;
            # several times faster on CPU than the masked window layout).
            kc = F.pad(k, (0, 0, 0, pad)).reshape(B, H * n, C, E)
            vc = F.pad(v, (0, 0, 0, pad)).reshape(B, H * n, C, E)
            y = F.scaled_dot_product_attention(qc.reshape(B, H * n, C, E), kc, vc, dropout_p=p, is_causal=True)
            self.facts = AttentionFacts(is_causal=True, dense_mask=False, chunked=True)
            info = self._window_stats(qc, k, T, want_maps) if want_stats else None
            return y.reshape(B, H, n * C, E)[:, :, :T], info
        # Keys/values padded by `overlap` on the left and to whole chunks on the right, then cut into
        # overlapping windows of W = overlap + chunk positions, one window per chunk.
        kw = F.pad(k, (0, 0, ov, pad)).unfold(2, W, C).transpose(-1, -2)
        vw = F.pad(v, (0, 0, ov, pad)).unfold(2, W, C).transpose(-1, -2)
        y = F.scaled_dot_product_attention(qc, kw, vw, attn_mask=self._window_mask(T, q.device), dropout_p=p)
        self.facts = AttentionFacts(is_causal=False, dense_mask=False, chunked=True)
        info = self._window_stats(qc, k, T, want_maps) if want_stats else None
        return y.reshape(B, H, n * C, E)[:, :, :T], info

    def _window_mask(self, T: int, device) -> torch.Tensor:
        key = ("window", T, self.chunk_size, self.overlap, self.causal, str(device))
        return MASK_CACHE.get(key, lambda: _window_mask(T, self.chunk_size, self.overlap, self.causal, device))

    def _window_stats(self, qc: torch.Tensor, k: torch.Tensor, T: int, want_maps: bool) -> AttentionStats:
        """Explicit chunk-window attention weights for telemetry (entropy, optionally stitched maps)."""
        B, H, n, C, _ = qc.shape
        W = self.overlap + C
        kw = F.pad(k, (0, 0, self.overlap, n * C - T)).unfold(2, W, C).transpose(-1, -2)
        scores = (qc @ kw.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        weights = scores.masked_fill(~self._window_mask(T, qc.device), float("-inf")).softmax(-1)
        real_rows = weights.reshape(B, H, n * C, W)[:, :, :T]  # padded queries are not telemetry
        return AttentionStats(
            entropy=_row_entropy(real_rows).mean(dim=(0, 2)),
            maps=self._stitch(weights, T) if want_maps else None,
        )

    def _stitch(self, weights: torch.Tensor, T: int) -> torch.Tensor:
        """Place each chunk's (C x W) attention weights onto a (T x T) canvas (task 11)."""
        C, ov = self.chunk_size, self.overlap
        B, H = weights.shape[:2]
        canvas = weights.new_zeros(B, H, T, T)
        for c in range(weights.shape[2]):
            s = c * C
            rows = min(C, T - s)
            start, end = max(s - ov, 0), min(s + C, T)
            # Window column w holds key s - O + w. Clamping `start` at 0 shifts the source slice
            # instead of letting a negative index wrap around to the end of the canvas.
            first = start - (s - ov)
            canvas[:, :, s : s + rows, start:end] = weights[:, :, c, :rows, first : first + end - start]
        return canvas


def _row_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of each attention row (last dim); masked zeros contribute nothing."""
    return -(weights * torch.log2(weights.clamp_min(1e-12))).sum(-1)


def kernel_notes(cfg: ModelConfig, device: str) -> list[str]:
    """Warnings for settings that send attention to a slow SDPA kernel on ``device`` ('cpu' or 'cuda')."""
    notes: list[str] = []
    if device == "cpu" and cfg.attn_dropout > 0:
        notes.append(
            f"model.attn_dropout={cfg.attn_dropout} on CPU: attention leaves SDPA's fused kernel for the math "
            "path (about 6x slower training measured on 2 cores); set model.attn_dropout=0 and regularise with "
            "model.dropout (embeddings and residual branches), which costs nothing in kernel choice"
        )
    if cfg.chunk_size is not None and (cfg.overlap or not cfg.causal):
        notes.append(
            f"chunk_size with {'overlap' if cfg.overlap else 'causal=false'} runs attention through a boolean window "
            "mask (masked SDPA); causal chunks with overlap=0 run mask-free and are several times faster on CPU"
        )
    return notes
