"""A KV cache for decoding: keys and values of the positions already seen, one entry per attention layer.

While ``with kv_cache(model) as cache:`` is active, the first forward (the prefill) runs as usual and keeps
every layer's keys and values; each later forward takes one new position, which attends to the cached keys
its chunk allows (``SelfAttention._cached_step``) at absolute position ``cache.length``. Everything else in a
block works position by position, so the plain stack, reversible coupling and ACT decode unchanged (ACT's
early exit is off while caching: a halted position's frozen state still provides keys to later layers).

Positions are absolute within the cached window: when the window moves, ``reset`` and prefill again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .attention import LayerKV


class KVCache:
    def __init__(self, blocks: nn.ModuleList):
        self.layers = [LayerKV() for _ in blocks]
        self.length = 0  # positions cached (the next position's index)

    def reset(self) -> None:
        for layer in self.layers:
            layer.k = layer.v = None
        self.length = 0


@contextlib.contextmanager
def kv_cache(model: nn.Module) -> Iterator[KVCache]:
    """Attach a fresh cache to ``model``'s attention layers for the duration of the block."""
    if not model.cfg.causal:
        raise ValueError("a KV cache needs a causal model (model.causal=true)")
    cache = KVCache(model.blocks)
    for block, layer in zip(model.blocks, cache.layers, strict=True):
        block.attn.kv = layer
    model.kv_cache = cache
    try:
        yield cache
    finally:
        for block in model.blocks:
            block.attn.kv = None
        model.kv_cache = None
