"""``build_model(cfg)``: the one way to make a BitTransformerLM from a ModelConfig (flat or framed)."""

from __future__ import annotations

from .config import ModelConfig
from .framed import FramedBitTransformerLM
from .model import BitTransformerLM


def build_model(cfg: ModelConfig) -> BitTransformerLM:
    """A freshly initialised model of ``cfg``: framed for ``arch='framed'``, else flat."""
    return (FramedBitTransformerLM if cfg.arch == "framed" else BitTransformerLM)(cfg)
