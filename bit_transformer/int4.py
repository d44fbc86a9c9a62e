"""The INT4 rule: per-group 4-bit weights, packed two per byte (shared by the export, the loader and QAT).

A linear's weight ``[out, in]`` is cut along ``in`` into groups of ``group_size``; each (row, group) gets a float32
scale and a zero point, and each weight a 4-bit code ``q`` in [0, 15], with ``w ~ (q - zero_point) * scale``:

- asymmetric (the default): the group's range, widened to hold 0, split in 15 steps: ``scale = (max - min) / 15``,
  ``zero_point = round(-min / scale)``;
- symmetric: ``scale = max|w| / 7``, ``zero_point = 8`` (codes -8..7 shifted by 8).

``q = clamp(round(w / scale) + zero_point, 0, 15)``, so every weight is within ``scale / 2`` of its value. An
all-zero group gets scale 1. Packing: code ``2j`` of a row in the low nibble of byte ``j``, code ``2j + 1`` in
the high nibble.
"""

from __future__ import annotations

import torch

LEVELS = 15  # 4 bits: codes 0..15
SYM_MAX = 7  # symmetric: max|w| maps to code 7 (+ zero point 8); -8 stays unused so the grid is centred


def check_group_size(group_size: int, in_features: int, name: str = "", field: str = "group_size") -> None:
    """Raise a ValueError naming ``field`` when ``group_size`` cannot cut rows of ``in_features`` weights."""
    where = f" ({name}: in_features {in_features})" if name else f" (in_features {in_features})"
    if group_size < 2 or group_size % 2:
        raise ValueError(f"{field} must be an even number >= 2 (two 4-bit codes per byte), got {group_size}")
    if in_features % group_size:
        divisors = [g for g in (16, 32, 64, 128) if in_features % g == 0]
        raise ValueError(f"{field} ({group_size}) must divide in_features{where}: try one of {divisors or [2]}")


def quantize_groups(w: torch.Tensor, group_size: int, *, symmetric: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(uint8 codes [out, in], float32 scale [out, in/G], uint8 zero point [out, in/G]) of a 2-D weight."""
    check_group_size(group_size, w.shape[1])
    g = w.detach().float().reshape(w.shape[0], -1, group_size)
    if symmetric:
        scale = g.abs().amax(-1) / SYM_MAX
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = g.amin(-1).clamp(max=0.0), g.amax(-1).clamp(min=0.0)
        scale = (hi - lo) / LEVELS
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if not symmetric:
        zero = torch.round(-lo / scale).clamp_(0, LEVELS)
    q = (torch.round(g / scale[..., None]) + zero[..., None]).clamp_(0, LEVELS)
    return q.reshape(w.shape).to(torch.uint8), scale, zero.to(torch.uint8)


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """float32 weights ``(q - zero_point) * scale`` from codes [out, in] and per-group scale/zero point."""
    groups = scale.shape[1]
    g = q.float().reshape(q.shape[0], groups, -1)
    return ((g - zero.float()[..., None]) * scale[..., None]).reshape(q.shape)


def fake_quant_groups(w: torch.Tensor, group_size: int, *, symmetric: bool = False) -> torch.Tensor:
    """w snapped to its int4 grid in the forward pass; identity gradient (straight-through)."""
    snapped = dequantize_groups(*quantize_groups(w, group_size, symmetric=symmetric))
    return w + (snapped.to(w.dtype) - w).detach()


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [out, in] (each 0..15, ``in`` even) -> uint8 [out, in/2], two codes per byte."""
    if q.shape[-1] % 2:
        raise ValueError(f"packing needs an even number of columns, got {q.shape[-1]}")
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_nibbles``."""
    out = torch.stack([packed & 0x0F, packed >> 4], dim=-1)
    return out.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
