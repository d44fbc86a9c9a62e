"""BitTransformerLM: a bit-level language model and its training engine (no MCP imports here)."""

from .bits import bits_to_text, text_to_bits
from .config import DataConfig, ModelConfig, RunConfig, SafetyConfig, TrainConfig
from .model import BitTransformerLM, ModelOutput

__all__ = [
    "BitTransformerLM",
    "DataConfig",
    "ModelConfig",
    "ModelOutput",
    "RunConfig",
    "SafetyConfig",
    "TrainConfig",
    "bits_to_text",
    "text_to_bits",
]
