"""Bits-per-byte evaluation of a BitTransformerLM, with compressor baselines.

Every metric (``bits_per_byte``, ``data_bits_per_byte``, ``parity_bits_per_byte``, ``bit_accuracy``,
``loss_by_phase``) comes from the next-bit cross-entropy in nats of the scored bits, split by frame phase
(0-7 data, 8 parity); their definitions are in docs/cli.md (``evaluate``).

Windows: the stream is cut into frame-aligned windows of ``seq_len`` input bits (a multiple of 9).
Window ``k`` reads bits ``[s_k, s_k + seq_len)`` and position ``p`` predicts bit ``s_k + p + 1``, so
with the default ``context_bits=0`` consecutive windows (stride ``seq_len``) score every bit of the
stream exactly once, except bit 0 of the whole stream, which has no context and is not scored. This is
the same windowing the training loader uses, so it matches the validation loss seen in training; the
first few predictions of each window see little context, which only makes the figure pessimistic.
``context_bits=c`` (a multiple of 9) overlaps windows by ``c`` bits (stride ``seq_len - c``) and scores
only positions ``p >= c`` of every window after the first, so each scored bit sees at least ``c`` bits
of context; still every bit is scored exactly once. It costs ``seq_len / (seq_len - c)`` times the
compute and gives a lower (better) figure.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from .baselines import MAX_CONTEXT_BYTES, compressor_bpb
from .bits import bits_to_bytes, text_to_bits
from .config import FRAME_BITS
from .telemetry import TelemetrySummary, summarize

LN2 = math.log(2.0)


class EvalReport(BaseModel):
    """Result of an evaluation; every cost is per byte of the evaluated text unless named otherwise."""

    bits_per_byte: float = Field(description="Mean next-bit CE over all 9 positions x 9 / ln 2.")
    data_bits_per_byte: float = Field(description="Mean CE over the 8 data-bit positions x 8 / ln 2.")
    parity_bits_per_byte: float = Field(description="Mean CE over the parity position / ln 2 (~0 when trained).")
    bit_accuracy: float = Field(description="Share of scored bits predicted right (argmax).")
    loss: float = Field(description="Mean next-bit cross-entropy, nats per bit.")
    loss_by_phase: list[float] = Field(description="Mean CE (nats) by phase of the predicted bit: 0-7 data, 8 parity.")
    accuracy_by_phase: list[float] = Field(description="Bit accuracy per phase of the predicted bit.")
    n_bytes: int = Field(description="Bytes evaluated.")
    n_predictions: int = Field(description="Bits scored (every bit but the first of the stream).")
    seq_len: int
    context_bits: int
    precision: str
    telemetry: TelemetrySummary | None = None
    compressors: dict[str, float] = Field(
        default_factory=dict, description="Bits per byte of gzip -9, bzip2 -9, xz -9e on the same bytes."
    )
    compressor_context_bytes: int = Field(0, description="Bytes the compressors saw before the evaluated ones.")
    elapsed_s: float = 0.0
    objective: str = Field("next_bit", description="next_bit, or denoise (a bidirectional denoising model).")
    bound: bool = Field(False, description="True: bits_per_byte is an upper bound (the denoising NELBO), not an "
                        "exact next-bit code length.")


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _autocast(amp: str, device: torch.device):
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if amp not in ("none", "fp32"):
        raise ValueError(f"amp must be 'bf16' or 'none', got {amp!r}")
    return contextlib.nullcontext()


def _logits(model: torch.nn.Module, x: torch.Tensor, **kw):
    out = model(x, **kw)
    return (out.logits, getattr(out, "telemetry", None)) if hasattr(out, "logits") else (out, None)


def _as_bits(bits) -> np.ndarray:
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().to("cpu", torch.uint8).numpy()
    arr = np.asarray(bits).reshape(-1)
    if arr.size % FRAME_BITS:
        raise ValueError(f"bit length {arr.size} is not a multiple of {FRAME_BITS}: pass whole 9-bit frames")
    return arr


def window_starts(n_bits: int, seq_len: int, context_bits: int = 0) -> list[int]:
    """Start offsets of the evaluation windows over a stream of ``n_bits`` (see the module docstring)."""
    stride = seq_len - context_bits
    starts = [0] if n_bits > 1 else []
    s = stride
    while s + context_bits < n_bits - 1:  # the window still has a target no earlier window scored
        starts.append(s)
        s += stride
    return starts


def _resolve_seq_len(model: torch.nn.Module, seq_len: int | None, context_bits: int) -> int:
    max_len = model.cfg.max_seq_len
    win = seq_len if seq_len is not None else max_len
    if win > max_len:
        raise ValueError(f"seq_len {win} is longer than the model's max_seq_len {max_len}")
    win -= win % FRAME_BITS  # frame-aligned windows: the phase of position p is p mod 9
    if win < FRAME_BITS:
        raise ValueError(f"seq_len must be at least {FRAME_BITS} bits (one frame)")
    if context_bits % FRAME_BITS or not 0 <= context_bits < win:
        raise ValueError(f"context_bits must be a multiple of {FRAME_BITS} in [0, {win}), got {context_bits}")
    return win


@torch.inference_mode()
def evaluate_bits(
    model: torch.nn.Module,
    bits,
    *,
    seq_len: int | None = None,
    batch_size: int = 16,
    max_bytes: int | None = None,
    amp: str = "none",
    context_bits: int = 0,
    telemetry: bool = True,
    telemetry_windows: int = 4,
    compressors: bool = True,
    compressor_context: bytes = b"",
    denoise_samples: int = 8,
) -> EvalReport:
    """Evaluate ``model`` on a bit stream (9 bits per byte, starting on a frame boundary).

    ``max_bytes`` evaluates only the first bytes; ``amp='bf16'`` runs under bf16 autocast;
    ``compressor_context`` is text the compressor baselines see first (e.g. the training split), so
    they are charged ``size(context + data) - size(context)``. A denoising model (``causal=false``) is
    scored by its NELBO bound instead, averaged over ``denoise_samples`` noise draws per window.
    """
    t0 = time.perf_counter()
    arr = _as_bits(bits)
    if max_bytes is not None:
        arr = arr[: max_bytes * FRAME_BITS]
    n = arr.size
    if n < 2:
        raise ValueError("nothing to evaluate: need at least one byte of text")
    L = _resolve_seq_len(model, seq_len, context_bits)
    device = _model_device(model)
    if not getattr(model.cfg, "causal", True):
        return _evaluate_denoise(model, arr, L, batch_size=batch_size, amp=amp, samples=denoise_samples,
                                 compressors=compressors, compressor_context=compressor_context, t0=t0)
    starts = window_starts(n, L, context_bits)
    full = [s for s in starts if s + L < n]  # windows with L inputs and L targets
    tail = [s for s in starts if s + L >= n]  # at most one shorter last window

    ce_sum = torch.zeros(FRAME_BITS, dtype=torch.float64)
    right = torch.zeros(FRAME_BITS, dtype=torch.float64)
    count = torch.zeros(FRAME_BITS, dtype=torch.float64)

    def score(windows: np.ndarray, first_pos: torch.Tensor) -> None:
        w = torch.from_numpy(windows.astype(np.int64)).to(device)
        x, y = w[:, :-1], w[:, 1:]
        with _autocast(amp, device):
            logits, _ = _logits(model, x)
        logp = F.log_softmax(logits.float(), dim=-1)
        ce = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).double().cpu()
        ok = (logp.argmax(-1) == y).double().cpu()
        pos = torch.arange(x.shape[1])
        keep = pos[None, :] >= first_pos[:, None]  # skip positions an earlier window already scored
        phase = ((pos + 1) % FRAME_BITS).expand_as(keep)[keep]
        ce_sum.index_add_(0, phase, ce[keep])
        right.index_add_(0, phase, ok[keep])
        count.index_add_(0, phase, torch.ones_like(ce[keep]))

    was_training = model.training
    model.eval()
    try:
        offsets = np.arange(L + 1)
        for i in range(0, len(full), batch_size):
            group = np.asarray(full[i : i + batch_size])
            first = torch.tensor([0 if s == 0 else context_bits for s in group])
            score(arr[group[:, None] + offsets[None, :]], first)
        for s in tail:
            score(arr[s:][None, :], torch.tensor([0 if s == 0 else context_bits]))
        summary = None
        if telemetry:
            sample = arr[np.asarray(full[:telemetry_windows])[:, None] + offsets[None, :L]] if full else arr[None, :]
            x = torch.from_numpy(sample.astype(np.int64)).to(device)
            with _autocast(amp, device):
                logits, record = _logits(model, x, return_telemetry=True)
            summary = summarize(x, logits.float(), record)
    finally:
        model.train(was_training)

    total = float(count.sum())
    data_n, par_n = float(count[:8].sum()), float(count[8])
    data, _ = bits_to_bytes(arr, strict=False)
    return EvalReport(
        bits_per_byte=float(ce_sum.sum()) / total * FRAME_BITS / LN2,
        data_bits_per_byte=float(ce_sum[:8].sum()) / data_n * 8 / LN2 if data_n else 0.0,
        parity_bits_per_byte=float(ce_sum[8]) / par_n / LN2 if par_n else 0.0,
        bit_accuracy=float(right.sum()) / total,
        loss=float(ce_sum.sum()) / total,
        loss_by_phase=[float(c / k) if k else float("nan") for c, k in zip(ce_sum, count, strict=True)],
        accuracy_by_phase=[float(r / k) if k else float("nan") for r, k in zip(right, count, strict=True)],
        n_bytes=n // FRAME_BITS,
        n_predictions=int(total),
        seq_len=L,
        context_bits=context_bits,
        precision="bf16" if amp == "bf16" else "fp32",
        telemetry=summary,
        compressors=compressor_bpb(data, compressor_context) if compressors else {},
        compressor_context_bytes=min(len(compressor_context), MAX_CONTEXT_BYTES) if compressors else 0,
        elapsed_s=time.perf_counter() - t0,
    )


def _evaluate_denoise(model: torch.nn.Module, arr: np.ndarray, L: int, *, batch_size: int, amp: str, samples: int,
                      compressors: bool, compressor_context: bytes, t0: float) -> EvalReport:
    """The denoising model's report: every cost is its share of the NELBO bound (see ``diffusion_eval``)."""
    from .diffusion_eval import score_windows

    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        s = score_windows(model, arr, L, samples=samples, batch_size=max(1, batch_size // samples),
                          device=device, autocast=_autocast(amp, device))
    finally:
        model.train(was_training)
    n_bytes = arr.size // FRAME_BITS
    total, phase_sum, right, seen = s["total"], s["phase_sum"], s["right"], s["seen"]
    data, _ = bits_to_bytes(arr, strict=False)
    bpb = total / n_bytes / LN2
    return EvalReport(
        bits_per_byte=bpb,
        data_bits_per_byte=bpb,  # parity follows from the data bits: it costs nothing
        parity_bits_per_byte=0.0,
        bit_accuracy=float(right.sum() / seen.sum()) if float(seen.sum()) else 0.0,
        loss=total / arr.size,
        loss_by_phase=[float(v) / n_bytes for v in phase_sum],
        accuracy_by_phase=[float(r / k) if k else float("nan") for r, k in zip(right, seen, strict=True)],
        n_bytes=n_bytes,
        n_predictions=int(seen.sum()),
        seq_len=L,
        context_bits=0,
        precision="bf16" if amp == "bf16" else "fp32",
        telemetry=None,
        compressors=compressor_bpb(data, compressor_context) if compressors else {},
        compressor_context_bytes=min(len(compressor_context), MAX_CONTEXT_BYTES) if compressors else 0,
        elapsed_s=time.perf_counter() - t0,
        objective="denoise",
        bound=True,
    )


def evaluate_text(model: torch.nn.Module, text: str, *, context_text: str | None = None, **kw) -> EvalReport:
    """Evaluate on UTF-8 ``text``; ``context_text`` (e.g. the training text) conditions the compressors."""
    if context_text is not None:
        kw.setdefault("compressor_context", context_text.encode("utf-8"))
    return evaluate_bits(model, text_to_bits(text), **kw)
