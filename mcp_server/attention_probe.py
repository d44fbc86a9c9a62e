"""Attention inspection (playbook tasks 9-12): how attention was computed, and whether it is right.

For a short input it reports, per layer: the backend facts the model recorded in the forward (SDPA,
``is_causal``, dense mask or not, chunked), per-head entropy, and, for chunked attention, whether the
stitched T x T maps equal a dense reference computed from the same q/k with ``dense_chunk_mask``,
overall and at the chunk edges (where the negative-index bug of task 11 used to show). It runs the
forward twice and reports the mask cache counters of each pass (task 10: the second pass must only
hit), and whether a default telemetry forward returns full maps (task 12: not when chunked, unless
``full_attn_logging`` asks for them).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field


class LayerAttention(BaseModel):
    layer: int
    backend: str
    is_causal: bool
    dense_mask: bool
    chunked: bool
    entropy_bits: list[float] = Field(description="Mean attention entropy per head (bits).")
    stitched_matches_dense: bool | None = Field(None, description="Chunked only: stitched maps == dense reference.")
    max_abs_diff: float | None = None
    edge_max_abs_diff: float | None = Field(None, description="Max |stitched - dense| in rows at chunk starts.")
    map: list[list[float]] | None = Field(None, description="Head-averaged T x T map (include_maps=true).")


class AttentionReport(BaseModel):
    text_bytes: int
    seq_len: int = Field(description="Bits fed to the model.")
    causal: bool
    chunk_size: int | None
    overlap: int
    full_attn_logging: bool | None = Field(description="The configured value (None = default).")
    full_attn_logging_resolved: bool = Field(description="What the model does: off by default when chunked.")
    telemetry_returns_maps: bool = Field(description="A default telemetry forward returned T x T maps.")
    layers: list[LayerAttention]
    mask_cache_first_pass: dict[str, int]
    mask_cache_second_pass: dict[str, int]
    mask_cache_reused: bool = Field(description="The second pass built no new mask (hits only).")
    model_source: str
    all_stitched_match: bool | None = None


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {"hits": after["hits"] - before["hits"], "misses": after["misses"] - before["misses"],
            "entries": after["entries"]}


def probe(model, text: str, *, layer: int | None = None, include_maps: bool = False,
          source: str = "") -> AttentionReport:
    import torch

    from bit_transformer.attention import MASK_CACHE, dense_chunk_mask
    from bit_transformer.bits import text_to_bits
    from bit_transformer.config import FRAME_BITS

    cfg = model.cfg
    max_bytes = cfg.max_seq_len // FRAME_BITS
    raw = text.encode("utf-8")[:max_bytes]
    bits = torch.from_numpy(text_to_bits(raw.decode("utf-8", errors="ignore")).astype("int64"))[None]
    T = bits.shape[1]
    if T < 2:
        raise ValueError("text is too short: give at least one character")
    layers = list(range(len(model.blocks))) if layer is None else [layer]
    if layer is not None and not 0 <= layer < len(model.blocks):
        n = len(model.blocks)
        raise ValueError(f"layer {layer} out of range: the model has {n} layers (0..{n - 1})")

    captured: dict[int, torch.Tensor] = {}
    hooks = [model.blocks[i].attn.register_forward_pre_hook(
        lambda _m, args, i=i: captured.__setitem__(i, args[0].detach())) for i in layers]
    model.eval()
    try:
        with torch.no_grad():
            s0 = MASK_CACHE.stats()
            out = model(bits, return_telemetry=True)
            s1 = MASK_CACHE.stats()
            model(bits, return_telemetry=True)
            s2 = MASK_CACHE.stats()
            facts = model.attention_facts()
            returns_maps = any(a is not None and a.maps is not None for a in (out.telemetry.attention or []))
            rows = []
            for i in layers:
                rows.append(_layer_row(model.blocks[i].attn, i, captured.get(i), facts[i], include_maps,
                                       dense_chunk_mask, T))
    finally:
        for h in hooks:
            h.remove()
    first, second = _delta(s1, s0), _delta(s2, s1)
    checks = [r.stitched_matches_dense for r in rows if r.stitched_matches_dense is not None]
    return AttentionReport(
        text_bytes=T // FRAME_BITS, seq_len=T, causal=cfg.causal, chunk_size=cfg.chunk_size, overlap=cfg.overlap,
        full_attn_logging=cfg.full_attn_logging, full_attn_logging_resolved=cfg.attn_logging,
        telemetry_returns_maps=returns_maps, layers=rows, mask_cache_first_pass=first, mask_cache_second_pass=second,
        mask_cache_reused=second["misses"] == 0, model_source=source,
        all_stitched_match=all(checks) if checks else None,
    )


def _layer_row(attn, i: int, x, fact, include_maps: bool, dense_chunk_mask, T: int) -> LayerAttention:
    fact_d: dict[str, Any] = asdict(fact)
    entropy: list[float] = []
    match = diff = edge = None
    avg_map = None
    if x is not None:
        T = x.shape[1]  # positions attention runs over: bits (flat) or frames + 1 (framed)
        saved = attn.facts
        _, info = attn(x, stats=True, maps=True)  # stitched maps when chunked, explicit weights otherwise
        attn.facts = saved  # keep the facts of the real forward
        entropy = [round(float(h), 6) for h in info.entropy]
        maps = info.maps
        if fact_d.get("chunked") and maps is not None:
            E = attn.head_dim
            q, k, _v = attn.project(x)
            scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(E)
            mask = dense_chunk_mask(T, attn.chunk_size, attn.overlap, attn.causal, x.device)
            dense = scores.masked_fill(~mask, float("-inf")).softmax(-1)
            err = (maps.float() - dense).abs()
            diff = float(err.max())
            starts = list(range(0, T, attn.chunk_size))
            edge = float(err[:, :, starts, :].max())
            match = diff < 1e-4
        if include_maps and maps is not None:
            avg_map = [[round(float(v), 5) for v in row] for row in maps.float().mean(dim=(0, 1))]
    return LayerAttention(layer=i, backend=fact_d.get("backend", "sdpa"), is_causal=bool(fact_d.get("is_causal")),
                          dense_mask=bool(fact_d.get("dense_mask")), chunked=bool(fact_d.get("chunked")),
                          entropy_bits=entropy, stitched_matches_dense=match, max_abs_diff=diff,
                          edge_max_abs_diff=edge, map=avg_map)
