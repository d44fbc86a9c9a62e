"""Lossless run-length coding of bit tensors (the compression-probability ramp is ``schedule.cosine_ramp``).

A bit row is cut into runs of equal bits, ``(value, length)`` pairs; runs longer than ``max_run``
are split into several pairs with the same value, so every length fits a fixed-width field.

The serialized stream (:func:`compress_bits`) spends one 9-bit frame per run, laid out exactly like a
codec byte so the model's frame-phase embedding and the parity check apply unchanged::

    bit 0      run value (0 or 1)
    bits 1..7  run length - 1, MSB first (lengths 1..128, hence MAX_RUN = 128)
    bit 8      even parity over bits 0..7

No header is needed: the runs' lengths add up to the row length. Natural text has short runs
(about 2 bits), so on text the stream is longer than the raw bits (ratio < 1); long runs (padding,
sparse or structured streams) compress up to 128 bits -> 9.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .bits import bits_to_bytes, bytes_to_bits
from .config import FRAME_BITS

MAX_RUN = 128  # 7-bit length field stores length - 1


def _as_1d(bits) -> torch.Tensor:
    t = bits if isinstance(bits, torch.Tensor) else torch.as_tensor(np.asarray(bits))
    if t.ndim != 1:
        raise ValueError(f"expected one row of bits (1-D), got shape {tuple(t.shape)}")
    t = t.detach().cpu().long()
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError("bits must be 0 or 1")
    return t


def rle_encode(bits_1d, max_run: int = MAX_RUN) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D bits -> (values, lengths), both long tensors; every length in 1..``max_run``."""
    if max_run < 1:
        raise ValueError(f"max_run must be >= 1, got {max_run}")
    t = _as_1d(bits_1d)
    if t.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty.clone()
    change = torch.nonzero(t[1:] != t[:-1]).flatten() + 1
    starts = torch.cat([torch.zeros(1, dtype=torch.long), change])
    lengths = torch.diff(starts, append=torch.tensor([t.numel()]))
    values = t[starts]
    # Split long runs: run r becomes ceil(len/max_run) pieces of max_run, the last one holding the rest.
    pieces = (lengths + max_run - 1) // max_run
    run_of_piece = torch.repeat_interleave(torch.arange(len(lengths)), pieces)
    first_piece = torch.cumsum(pieces, 0) - pieces
    piece_no = torch.arange(int(pieces.sum())) - first_piece[run_of_piece]
    piece_len = (lengths[run_of_piece] - piece_no * max_run).clamp(max=max_run)
    return values[run_of_piece], piece_len


def rle_decode(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rle_encode`: (values, lengths) -> 1-D long tensor of bits."""
    values, lengths = torch.as_tensor(values).long(), torch.as_tensor(lengths).long()
    if values.shape != lengths.shape or values.ndim != 1:
        raise ValueError(f"values {tuple(values.shape)} and lengths {tuple(lengths.shape)} must be equal 1-D shapes")
    if lengths.numel() and lengths.min() < 1:
        raise ValueError("run lengths must be >= 1")
    return torch.repeat_interleave(values, lengths)


def compress_bits(bits_1d) -> torch.Tensor:
    """1-D bits -> RLE stream (long tensor, 9 bits per run, parity-valid frames; see module doc)."""
    values, lengths = rle_encode(bits_1d, MAX_RUN)
    codes = (values << 7 | (lengths - 1)).to(torch.uint8).numpy()
    return torch.from_numpy(bytes_to_bits(codes).astype(np.int64))


def decompress_bits(stream) -> torch.Tensor:
    """RLE stream from :func:`compress_bits` -> the original 1-D long tensor of bits.

    A corrupted frame raises ``bits.ParityError`` naming the run (frame) index.
    """
    t = _as_1d(stream)
    if t.numel() % FRAME_BITS:
        raise ValueError(f"compressed stream length {t.numel()} is not a multiple of {FRAME_BITS}")
    data, _ = bits_to_bytes(t.numpy().astype(np.uint8), strict=True)
    codes = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).astype(np.int64))
    return rle_decode(codes >> 7, (codes & 0x7F) + 1)


def compress_batch(bits: torch.Tensor) -> list[torch.Tensor]:
    """(B, T) bits -> one compressed stream per row (rows differ in length, hence a list)."""
    if bits.ndim != 2:
        raise ValueError(f"expected (B, T) bits, got shape {tuple(bits.shape)}")
    return [compress_bits(row) for row in bits]


def decompress_batch(rows: Iterable[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Compressed rows -> (B, T) long tensor; every row must decode to the same length."""
    decoded = [decompress_bits(r) for r in rows]
    lengths = {len(d) for d in decoded}
    if len(lengths) > 1:
        raise ValueError(f"compressed rows decode to different lengths {sorted(lengths)}; batch rows of equal length")
    if not decoded:
        raise ValueError("no rows to decompress")
    return torch.stack(decoded)


def compression_ratio(bits: torch.Tensor | Sequence[int]) -> float:
    """Raw bits / compressed bits (> 1: the stream is shorter). (B, T) input counts all rows together."""
    t = bits if isinstance(bits, torch.Tensor) else torch.as_tensor(np.asarray(bits))
    rows = [t] if t.ndim == 1 else list(t.reshape(-1, t.shape[-1]))
    raw = sum(int(r.numel()) for r in rows)
    packed = sum(int(compress_bits(r).numel()) for r in rows)
    return raw / packed if packed else 1.0
