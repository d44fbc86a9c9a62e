"""The INT8/INT4 export workflow: write the artifact, then measure what it costs in quality.

``bit-transformer export-int8`` and the MCP ``export_int8`` tool both call ``export_int8_checked``: the
artifact (``quantization.export_int8``, or ``quantization_int4.export_int4`` with ``bits=4``) plus bits per
byte of the fp32 model and of the reloaded artifact on the same validation bytes, so the reported
``bpb_delta`` is what a user of the artifact gets.
The records live here, torch-free, so the CLI's parser can import this module without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from .config import RunConfig

if TYPE_CHECKING:
    from .model import BitTransformerLM

DEFAULT_EVAL_BYTES = 4096  # small enough to score twice (fp32, int8) on a CPU within a tool call


class Int8Info(BaseModel):
    """What export_int8 (or export_int4: ``bits`` 4) wrote."""

    path: str
    files: list[str]
    artifact_bytes: int
    fp32_bytes: int
    size_ratio: float
    quantized_linears: int
    quantized_embeddings: int
    int8_params: int
    int4_params: int = 0
    fp32_params: int
    bits: Literal[4, 8] = 8
    group_size: int | None = Field(None, description="INT4: weights per scale/zero point.")
    scheme: str = "weights int8 per-channel symmetric (zero point 0); activations dynamic per-tensor"
    engine: str | None
    from_qat: bool


class ExportReport(Int8Info):
    """What ``export_int8_checked`` wrote (``Int8Info``) and the quality check on validation bytes."""

    eval_bytes: int | None = Field(None, description="Validation bytes measured (None: the check was skipped).")
    bpb_fp32: float | None = None
    bpb_int8: float | None = Field(None, description="Bits per byte of the artifact as loaded (int8 or int4).")
    bpb_delta: float | None = Field(None, description="Quality change: artifact minus fp32 bits per byte.")


def export_bits(config: RunConfig | None, bits: int | None = None, group_size: int | None = None
                ) -> tuple[int, int | None]:
    """(bits, group_size) of an export: the arguments, else the run's train.quantization/int4_group_size."""
    train = getattr(config, "train", None)  # a RunConfig; an export may hold only a ModelConfig
    bits = bits or (4 if train is not None and train.quantization == "int4" else 8)
    if bits == 8:
        if group_size is not None:
            raise ValueError("group_size applies to bits=4 only: drop it, or export with bits=4")
        return 8, None
    return 4, group_size or (train.int4_group_size if train is not None else None)


def export_int8_checked(model: BitTransformerLM, out: str | Path, *, config: RunConfig | None = None,
                        val_bits=None, eval_bytes: int = DEFAULT_EVAL_BYTES, bits: int | None = None,
                        group_size: int | None = None) -> ExportReport:
    """Export ``model`` at ``out``; with ``val_bits`` and ``eval_bytes`` > 0, compare fp32 and the artifact.

    ``bits`` 8 (INT8) or 4 (INT4 with ``group_size``); unset, both follow ``config`` (``export_bits``).
    ``val_bits`` is a validation bit stream (9 bits per byte); its first ``eval_bytes`` bytes are scored
    by both models (no compressors, no telemetry). ``config`` is stored in the artifact.
    """
    from .evaluate import evaluate_bits
    from .quantization import export_int8
    from .quantization_int4 import DEFAULT_GROUP_SIZE, export_int4, load_quantized

    bits, group_size = export_bits(config, bits, group_size)
    if bits == 4:
        info = export_int4(model, out, group_size=group_size or DEFAULT_GROUP_SIZE, config=config)
    else:
        info = export_int8(model, out, config=config)
    if not eval_bytes or val_bits is None:
        return ExportReport(**info.model_dump())
    kw = {"max_bytes": eval_bytes, "compressors": False, "telemetry": False}
    fp32 = evaluate_bits(model, val_bits, **kw)
    int8 = evaluate_bits(load_quantized(out)[0], val_bits, **kw)  # the artifact as loaded, not the in-memory model
    return ExportReport(**info.model_dump(), eval_bytes=fp32.n_bytes, bpb_fp32=fp32.bits_per_byte,
                        bpb_int8=int8.bits_per_byte, bpb_delta=int8.bits_per_byte - fp32.bits_per_byte)
