"""BitTransformerLM: a bit-level language model and its training engine (no MCP imports here).

The configuration models import without torch, so tools that only need them (the MCP server's
start-up, `patch_config`) stay fast; everything else loads on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import DataConfig, ModelConfig, RunConfig, SafetyConfig, TrainConfig

_LAZY = {
    "BitTransformerLM": ".model",
    "ModelOutput": ".model",
    "build_model": ".factory",
    "bits_to_text": ".bits",
    "text_to_bits": ".bits",
}

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "SafetyConfig", "TrainConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
