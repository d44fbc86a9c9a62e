"""What general-purpose compressors pay for the same bytes, in bits per byte.

A language model's bits per byte is a code length: the number of bits an arithmetic coder driven by
the model would need. A compressor's output size is the same kind of number, so ``gzip -9``,
``bzip2 -9`` and ``xz -9e`` are honest reference points. All three run in-process through the
standard library (``zlib``-backed ``gzip``, ``bz2``, ``lzma``), so no external binary is needed.

Conditioning: ``compressor_bpb(data, context)`` charges ``size(context + data) - size(context)``,
the cost of ``data`` for a compressor that has already seen ``context``. With the Tiny Shakespeare
training split as context this reproduces the reference numbers in ``shared/data/README.md``
(validation given training: gzip 3.10, bzip2 2.40, xz 2.52).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable

# Name -> compressor at its strongest standard setting (`gzip -9`, `bzip2 -9`, `xz -9e`).
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, compresslevel=9, mtime=0),
    "bzip2": lambda b: bz2.compress(b, compresslevel=9),
    "xz": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}

# The training bytes every caller (CLI evaluate, the evaluate tool, the dashboard) gives the compressors,
# and the cap on any context: its tail is kept. 1 MiB holds all that gzip (32 KiB window) and bzip2 -9
# (900 kB blocks) can use, and all of Tiny Shakespeare's training split, so the reference numbers above
# come out exactly. Only xz (64 MiB dictionary) could see further, and xz -9e compresses the context
# twice per call: measured here on Tiny Shakespeare's validation split, 256 KiB of context costs 0.4 s
# CPU but overstates xz by 4.6% (2.63 vs 2.52); 1 MiB costs 1.4 s; 8 MiB costs 14 s (too slow for a
# tool call) and moved xz by under 0.5%.
MAX_CONTEXT_BYTES = 1 << 20


def training_context(train_bits) -> bytes:
    """The compressors' context for "validation given training": the tail of the training split's bytes."""
    if not len(train_bits):
        return b""
    from .bits import bits_to_bytes  # lazy: this module stays torch-free
    from .config import FRAME_BITS

    return bits_to_bytes(train_bits[-MAX_CONTEXT_BYTES * FRAME_BITS :], strict=False)[0]


def compressor_bpb(data: bytes, context: bytes = b"", *, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Bits per byte of ``data`` under each compressor, optionally given ``context`` already seen.

    Returns ``{"gzip": ..., "bzip2": ..., "xz": ...}``. Empty ``data`` gives an empty dict (no cost
    to report).
    """
    if not data:
        return {}
    context = context[-MAX_CONTEXT_BYTES:]
    out: dict[str, float] = {}
    for name in names or tuple(COMPRESSORS):
        compress = COMPRESSORS[name]
        base = len(compress(context)) if context else 0
        out[name] = 8.0 * (len(compress(context + data)) - base) / len(data)
    return out
