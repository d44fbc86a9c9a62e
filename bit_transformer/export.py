"""The INT8 export workflow: write the artifact, then measure what it costs in quality.

``bit-transformer export-int8`` and the MCP ``export_int8`` tool both call ``export_int8_checked``: the
artifact (``quantization.export_int8``) plus bits per byte of the fp32 model and of the reloaded INT8
model on the same validation bytes, so the reported ``bpb_delta`` is what a user of the artifact gets.
The records live here, torch-free, so the CLI's parser can import this module without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from .config import RunConfig

if TYPE_CHECKING:
    from .model import BitTransformerLM

DEFAULT_EVAL_BYTES = 4096  # small enough to score twice (fp32, int8) on a CPU within a tool call


class Int8Info(BaseModel):
    """What export_int8 wrote."""

    path: str
    files: list[str]
    artifact_bytes: int
    fp32_bytes: int
    size_ratio: float
    quantized_linears: int
    quantized_embeddings: int
    int8_params: int
    fp32_params: int
    scheme: str = "weights int8 per-channel symmetric (zero point 0); activations dynamic per-tensor"
    engine: str
    from_qat: bool


class ExportReport(Int8Info):
    """What ``export_int8_checked`` wrote (``Int8Info``) and the quality check on validation bytes."""

    eval_bytes: int | None = Field(None, description="Validation bytes measured (None: the check was skipped).")
    bpb_fp32: float | None = None
    bpb_int8: float | None = None
    bpb_delta: float | None = Field(None, description="Quality change: int8 minus fp32 bits per byte.")


def export_int8_checked(model: BitTransformerLM, out: str | Path, *, config: RunConfig | None = None,
                        val_bits=None, eval_bytes: int = DEFAULT_EVAL_BYTES) -> ExportReport:
    """Export ``model`` to INT8 at ``out``; with ``val_bits`` and ``eval_bytes`` > 0, compare fp32 and int8.

    ``val_bits`` is a validation bit stream (9 bits per byte); its first ``eval_bytes`` bytes are scored
    by both models (no compressors, no telemetry). ``config`` is stored in the artifact.
    """
    from .evaluate import evaluate_bits
    from .quantization import export_int8, load_int8

    info = export_int8(model, out, config=config)
    if not eval_bytes or val_bits is None:
        return ExportReport(**info.model_dump())
    kw = {"max_bytes": eval_bytes, "compressors": False, "telemetry": False}
    fp32 = evaluate_bits(model, val_bits, **kw)
    int8 = evaluate_bits(load_int8(out)[0], val_bits, **kw)  # the artifact as loaded, not the in-memory model
    return ExportReport(**info.model_dump(), eval_bytes=fp32.n_bytes, bpb_fp32=fp32.bits_per_byte,
                        bpb_int8=int8.bits_per_byte, bpb_delta=int8.bits_per_byte - fp32.bits_per_byte)
