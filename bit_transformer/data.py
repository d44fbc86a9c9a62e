"""Corpus loading, the bit cache, frame-aligned windows and the DataLoader (playbook tasks 1 and 5).

Text is encoded to bits (9 per byte, see ``bits.py``) once and stored under ``cache_dir`` as a
``.npy`` file that is memory-mapped on every later load, so DataLoader workers share pages instead of
copying the corpus. Cache layout (one pair per source + content)::

    <cache_dir>/<slug>-<key>.bits.npy   uint8, shape (9 * n_bytes,): the whole text's bits
    <cache_dir>/<slug>-<key>.json       metadata: format, source_id, content_hash, n_bytes, n_bits

``key`` hashes the source id and the SHA-256 of the bytes, so an edited file gets a new entry. Both
files are written to a temporary name and renamed into place; the JSON goes last and marks the entry
complete. A missing, truncated, mis-shaped or mismatching entry is rebuilt (``Corpus.cache_note``
says why). The train/validation split is made on load, not in the cache: the first
``int(n_bytes * (1 - val_fraction))`` bytes train, the rest validate, both whole 9-bit frames.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .bits import bytes_to_bits
from .config import FRAME_BITS, DataConfig
from .sources import SourceText, builtin_text, read_source

__all__ = [
    "BitWindowDataset",
    "Corpus",
    "builtin_text",
    "load_corpus",
    "split_point",
]

CACHE_FORMAT = 1
_ENCODE_CHUNK = 1 << 22  # bytes encoded per step: bounds peak memory at ~9 x 4 MiB for any corpus size
_SAMPLE_BLOCKS = 16  # verification blocks checked on a cache hit (plus the first and last)
_SAMPLE_BYTES = 4096


@dataclass
class Corpus:
    """A loaded corpus: train/val bits (read-only memmaps of the cache file) and where they came from."""

    train: np.ndarray
    val: np.ndarray
    source_id: str
    content_hash: str
    n_bytes: int
    cache_hit: bool
    cache_path: Path
    cache_note: str | None = None  # why an existing cache entry was rebuilt, if it was

    @property
    def n_train_bytes(self) -> int:
        return len(self.train) // FRAME_BITS

    @property
    def n_val_bytes(self) -> int:
        return len(self.val) // FRAME_BITS


def split_point(n_bytes: int, val_fraction: float) -> int:
    """Bytes that go to training: the first int(n * (1 - val_fraction)); the tail validates."""
    n_train = int(n_bytes * (1.0 - val_fraction))
    if n_train < 1 or n_train >= n_bytes:
        raise ValueError(
            f"cannot split {n_bytes} bytes with val_fraction={val_fraction}: both parts need at least one byte"
        )
    return n_train


def _slug(source_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source_id).strip("_")[:48] or "corpus"


def _cache_paths(cache_dir: Path, source_id: str, content_hash: str) -> tuple[Path, Path]:
    key = hashlib.sha256(f"{CACHE_FORMAT}\0{source_id}\0{content_hash}".encode()).hexdigest()[:16]
    stem = f"{_slug(source_id)}-{key}"
    return cache_dir / f"{stem}.bits.npy", cache_dir / f"{stem}.json"


def _atomic_tmp(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def _write_bits(path: Path, data: bytes) -> None:
    """Encode ``data`` chunk by chunk straight into a new .npy, then rename it into place."""
    tmp = _atomic_tmp(path)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(data) * FRAME_BITS,))
        view = memoryview(data)
        for start in range(0, len(data), _ENCODE_CHUNK):
            chunk = view[start : start + _ENCODE_CHUNK]
            out[start * FRAME_BITS : (start + len(chunk)) * FRAME_BITS] = bytes_to_bits(bytes(chunk))
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = _atomic_tmp(path)
    try:
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _open_bits(path: Path, n_bits: int) -> np.memmap:
    """Memory-map a cached .npy, checking header, dtype, shape and exact file size."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if not isinstance(arr, np.memmap) or arr.dtype != np.uint8 or arr.shape != (n_bits,):
        raise ValueError(f"expected uint8 bits of shape ({n_bits},), found {arr.dtype} {arr.shape}")
    if path.stat().st_size != arr.offset + n_bits:
        raise ValueError(f"file size {path.stat().st_size} != header {arr.offset} + {n_bits} bits")
    return arr


def _verify_bits(bits: np.ndarray, data: bytes, mode: Literal["sample", "full"]) -> None:
    """Decode (parts of) the cached bits and compare them with the source bytes."""
    n = len(data)
    if mode == "full":
        blocks = [(s, min(n, s + _ENCODE_CHUNK)) for s in range(0, n, _ENCODE_CHUNK)]
    else:
        starts = {0, max(0, n - _SAMPLE_BYTES)}
        starts.update((i * n) // (_SAMPLE_BLOCKS + 1) for i in range(1, _SAMPLE_BLOCKS + 1))
        blocks = [(s, min(n, s + _SAMPLE_BYTES)) for s in sorted(starts)]
    src = np.frombuffer(data, dtype=np.uint8)
    for lo, hi in blocks:
        frames = np.asarray(bits[lo * FRAME_BITS : hi * FRAME_BITS]).reshape(-1, FRAME_BITS)
        if frames.max(initial=0) > 1 or (frames.sum(axis=1) % 2).any():
            raise ValueError(f"invalid bits or parity in bytes {lo}..{hi}")
        if not np.array_equal(np.packbits(frames[:, :8], axis=1).reshape(-1), src[lo:hi]):
            raise ValueError(f"cached bits differ from the source in bytes {lo}..{hi}")


def _try_cache(bits_path: Path, meta_path: Path, src: SourceText, digest: str, verify: str) -> np.memmap | str:
    """The cached memmap if the entry is complete and matches, else the reason it is not usable."""
    if not meta_path.exists():
        return "missing" if not bits_path.exists() else "metadata missing (interrupted write)"
    try:
        meta = json.loads(meta_path.read_text())
        expected = {
            "format": CACHE_FORMAT,
            "source_id": src.source_id,
            "content_hash": digest,
            "n_bytes": len(src.data),
        }
        wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
        if wrong:
            return f"metadata mismatch: {wrong}"
        bits = _open_bits(bits_path, len(src.data) * FRAME_BITS)
        _verify_bits(bits, src.data, "full" if verify == "full" else "sample")
        return bits
    except (OSError, ValueError, json.JSONDecodeError) as err:
        return f"corrupt: {err}"


def load_corpus(cfg: DataConfig, cache_dir: str | Path, *, verify: Literal["sample", "full"] = "sample") -> Corpus:
    """Read the configured text, encode it to bits once (cached), and split it into train/val memmaps.

    The source is always read (to hash it, so edits are never served stale); encoding is skipped on a
    cache hit. ``verify='sample'`` checks the cached bits against the text at 18 blocks of 4 KiB;
    ``'full'`` checks every byte (slower, catches any flipped bit).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    src = read_source(cfg)
    if not src.data:
        raise ValueError(f"source {src.source_id!r} produced no text")
    n_train = split_point(len(src.data), cfg.val_fraction)
    digest = hashlib.sha256(src.data).hexdigest()
    bits_path, meta_path = _cache_paths(cache_dir, src.source_id, digest)

    cached = _try_cache(bits_path, meta_path, src, digest, verify)
    hit = not isinstance(cached, str)
    note = None if hit or cached == "missing" else cached
    if not hit:
        meta_path.unlink(missing_ok=True)  # entry is incomplete until the new JSON lands
        _write_bits(bits_path, src.data)
        _write_json(
            meta_path,
            {
                "format": CACHE_FORMAT,
                "source_id": src.source_id,
                "content_hash": digest,
                "n_bytes": len(src.data),
                "n_bits": len(src.data) * FRAME_BITS,
                "files": src.files[:100],
            },
        )
        _open_bits(bits_path, len(src.data) * FRAME_BITS)
    # Separate memmaps (not slices) so each knows its own file offset; the dataset re-opens them in workers.
    header = np.load(bits_path, mmap_mode="r").offset
    split_bit = n_train * FRAME_BITS
    n_bits = len(src.data) * FRAME_BITS
    train = np.memmap(bits_path, dtype=np.uint8, mode="r", offset=header, shape=(split_bit,))
    val = np.memmap(bits_path, dtype=np.uint8, mode="r", offset=header + split_bit, shape=(n_bits - split_bit,))
    return Corpus(
        train=train,
        val=val,
        source_id=src.source_id,
        content_hash=digest,
        n_bytes=len(src.data),
        cache_hit=hit,
        cache_path=bits_path,
        cache_note=note,
    )


def _memmap_location(arr: np.ndarray) -> tuple[str, int, int] | None:
    """(file, byte offset, length) of a 1-D contiguous uint8 view of a file memmap; None otherwise."""
    if arr.ndim != 1 or arr.dtype != np.uint8 or not arr.flags.c_contiguous:
        return None
    root = arr
    while isinstance(root.base, np.ndarray):  # slices of a memmap point at it through .base
        root = root.base
    if not isinstance(root, np.memmap) or not getattr(root, "filename", None):
        return None
    offset = root.offset + (arr.ctypes.data - root.ctypes.data)
    return str(root.filename), int(offset), len(arr)


class BitWindowDataset(Dataset):
    """Frame-aligned windows of ``seq_len`` bits and their next-bit targets.

    Window i starts at bit ``i * stride`` with ``stride = ceil(seq_len / 9) * 9`` (always a frame
    boundary) and needs ``seq_len + 1`` bits, because targets are the inputs shifted by one bit.
    Reads only the bits of the requested window, so a memmap is never loaded whole; pickling a
    memmap-backed dataset (DataLoader workers under spawn/forkserver) sends the file location,
    not the data.
    """

    def __init__(self, bits: np.ndarray, seq_len: int):
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if bits.ndim != 1:
            raise ValueError(f"bits must be 1-D, got shape {bits.shape}")
        if len(bits) < seq_len + 1:
            raise ValueError(
                f"{len(bits)} bits ({len(bits) // FRAME_BITS} bytes) are too few for one window: "
                f"seq_len={seq_len} needs {seq_len + 1} bits (inputs plus the next-bit target)"
            )
        self.bits = bits
        self.seq_len = seq_len
        self.stride = math.ceil(seq_len / FRAME_BITS) * FRAME_BITS
        self._len = (len(bits) - seq_len - 1) // self.stride + 1

    def __len__(self) -> int:
        return self._len

    def offset(self, index: int) -> int:
        """Bit offset where window ``index`` starts (a multiple of 9)."""
        if not -self._len <= index < self._len:
            raise IndexError(f"window {index} out of range for {self._len} windows")
        return (index % self._len) * self.stride

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.offset(int(index))
        window = torch.from_numpy(np.array(self.bits[start : start + self.seq_len + 1], dtype=np.int64))
        return window[:-1], window[1:]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        loc = _memmap_location(self.bits)
        if loc is not None:
            state["bits"] = None
            state["_memmap"] = loc
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        loc = state.pop("_memmap", None)
        self.__dict__.update(state)
        if loc is not None:
            filename, offset, length = loc
            self.bits = np.memmap(filename, dtype=np.uint8, mode="r", offset=offset, shape=(length,))
