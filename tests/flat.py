"""Configs for tests about the flat bit model (one position per bit, classic block).

The defaults are the framed model with the modern block (the best small-budget CPU recipe). Tests of
per-bit machinery (chunked attention over bits, phase embeddings, compression, denoising, the seed
playbook's layers) name the flat classic model explicitly through these helpers.
"""

from __future__ import annotations

from bit_transformer import ModelConfig

FLAT = {"arch": "flat", "block": "classic"}


def flat_cfg(**kw) -> ModelConfig:
    """A ModelConfig of the flat model with the classic block; `kw` sets (or overrides) any field."""
    return ModelConfig(**{**FLAT, **kw})
