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

# Context beyond this is dropped (keeping its tail): xz -9e on tens of MiB takes minutes, and none
# of the three can use context further back than this anyway (gzip: 32 KiB, bzip2: 900 kB blocks,
# xz -9e: a 64 MiB dictionary, so xz alone could in principle see slightly further).
MAX_CONTEXT_BYTES = 8 << 20


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
