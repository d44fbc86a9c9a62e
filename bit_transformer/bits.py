"""Text <-> bits: every UTF-8 byte becomes 8 data bits (MSB first) plus one even-parity bit.

The parity bit makes the number of ones in each 9-bit frame even, so any single flipped bit in a
frame is detected on decoding. All conversions are vectorized table look-ups: no Python loop per
byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .config import FRAME_BITS

# Row b of this table is the 9-bit frame of byte value b.
_FRAMES = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)
_FRAMES = np.concatenate([_FRAMES, (_FRAMES.sum(axis=1, keepdims=True) % 2).astype(np.uint8)], axis=1)
_FRAMES.setflags(write=False)
# Multiplying a little-endian uint64 whose 8 bytes are 0/1 by this constant gathers those bits into
# the top byte, first byte most significant: a branch-free packbits for one 9-bit frame.
_MSB_GATHER = np.uint64(0x8040201008040201)

BitsLike = np.ndarray | torch.Tensor | list[int]


class ParityError(ValueError):
    """A 9-bit frame whose parity bit does not match its data bits."""

    def __init__(self, byte_offset: int, bad_offsets: list[int]):
        self.byte_offset = byte_offset
        self.bad_offsets = bad_offsets
        more = f" ({len(bad_offsets)} bad frames in total)" if len(bad_offsets) > 1 else ""
        super().__init__(
            f"parity check failed at byte offset {byte_offset} (bits {byte_offset * FRAME_BITS}"
            f"..{byte_offset * FRAME_BITS + FRAME_BITS - 1}){more}; decode with strict=False to "
            "replace bad bytes instead of raising"
        )


@dataclass
class DecodeReport:
    """What lenient decoding found: the text and the byte offsets whose parity failed."""

    text: str
    bad_offsets: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad_offsets


def bytes_to_bits(data: bytes | bytearray | np.ndarray) -> np.ndarray:
    """Bytes -> flat uint8 array of 9 bits per byte."""
    arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    return np.take(_FRAMES, arr.astype(np.uint8, copy=False), axis=0).reshape(-1)


def text_to_bits(text: str) -> np.ndarray:
    """UTF-8 text -> flat uint8 array of 9 bits per byte."""
    return bytes_to_bits(text.encode("utf-8"))


def _as_frames(bits: BitsLike) -> np.ndarray:
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().to("cpu", torch.uint8).numpy()
    arr = np.asarray(bits, dtype=np.uint8)
    if arr.shape[-1] % FRAME_BITS:
        raise ValueError(
            f"bit length {arr.shape[-1]} is not a multiple of {FRAME_BITS}: pass whole 9-bit frames"
        )
    if arr.size and arr.max() > 1:
        raise ValueError("bits must be 0 or 1")
    return arr.reshape(*arr.shape[:-1], -1, FRAME_BITS)


def _pack_frames(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., k, 9) 0/1 frames -> (data bytes (k_total,), parity-failed mask (k_total,)), flattened."""
    flat = np.ascontiguousarray(frames, dtype=np.uint8).reshape(-1)
    # An unaligned uint64 view starting at each frame covers exactly its 8 data bits and stays inside
    # the buffer (the 0/1 check in _as_frames guarantees each byte is 0 or 1, as the multiply needs).
    words = np.ndarray((flat.size // FRAME_BITS,), dtype="<u8", buffer=flat, strides=(FRAME_BITS,))
    data = ((words * _MSB_GATHER) >> np.uint64(56)).astype(np.uint8)
    bad = ((np.bitwise_count(data) & 1) ^ flat[8::FRAME_BITS]).astype(bool)
    return data, bad


def parity_errors(bits: BitsLike) -> np.ndarray:
    """Boolean array, one entry per frame (batch dims kept): True where parity fails."""
    frames = _as_frames(bits)
    return _pack_frames(frames)[1].reshape(frames.shape[:-1])


def bits_to_bytes(bits: BitsLike, *, strict: bool = True, replacement: int = 0x3F) -> tuple[bytes, list[int]]:
    """One row of bits -> (bytes, byte offsets whose parity failed).

    With ``strict=True`` a parity failure raises :class:`ParityError` naming the first bad byte;
    otherwise bad bytes are replaced by ``replacement`` (``?``) and reported.
    """
    frames = _as_frames(bits)
    if frames.ndim != 2:
        raise ValueError(f"expected one row of bits, got shape {tuple(frames.shape[:-1])} frames")
    data, failed = _pack_frames(frames)
    bad = np.flatnonzero(failed).tolist() if failed.any() else []
    if bad:
        if strict:
            raise ParityError(bad[0], bad)
        data[bad] = replacement
    return data.tobytes(), bad


def bits_to_text(bits: BitsLike, *, strict: bool = True) -> str:
    """Bits -> text. Strict: raises on parity failure or invalid UTF-8; lenient: replaces both."""
    data, _ = bits_to_bytes(bits, strict=strict)
    return data.decode("utf-8", errors="strict" if strict else "replace")


def decode_report(bits: BitsLike) -> DecodeReport:
    """Lenient decode that says which byte offsets failed their parity check."""
    data, bad = bits_to_bytes(bits, strict=False)
    return DecodeReport(text=data.decode("utf-8", errors="replace"), bad_offsets=bad)


def batch_text_to_bits(texts: list[str], *, pad_to: int | None = None) -> torch.Tensor:
    """Texts -> (B, T) long tensor; shorter rows padded with whole zero frames (parity-valid)."""
    rows = [text_to_bits(t) for t in texts]
    width = pad_to if pad_to is not None else max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.uint8)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"text {i} needs {len(r)} bits, more than pad_to={width}")
        out[i, : len(r)] = r
    return torch.from_numpy(out).long()


def batch_bits_to_text(bits: torch.Tensor | np.ndarray, *, strict: bool = True) -> list[str]:
    """(B, T) bits -> one string per row."""
    return [bits_to_text(row, strict=strict) for row in bits]


def set_parity(bits: torch.Tensor) -> torch.Tensor:
    """Return ``bits`` (..., 9k) with every 9th bit recomputed from the 8 data bits before it."""
    frames = bits.reshape(*bits.shape[:-1], -1, FRAME_BITS).clone()
    frames[..., 8] = frames[..., :8].sum(dim=-1) % 2
    return frames.reshape(bits.shape)
