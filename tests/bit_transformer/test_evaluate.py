"""evaluate.py: bits-per-byte definitions, windowing, compressor baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bit_transformer.baselines import compressor_bpb
from bit_transformer.bits import text_to_bits
from bit_transformer.config import FRAME_BITS, ModelConfig
from bit_transformer.evaluate import evaluate_bits, evaluate_text, window_starts
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM

from .rule_model import RuleModel, copy_previous_frame

SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare" / "input.txt"
if not SHAKESPEARE.exists():
    SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. " * 2



def uniform(x):
    return torch.zeros(*x.shape, 2)




def tiny_model(seed: int = 0) -> BitTransformerLM:
    torch.manual_seed(seed)
    return build_model(ModelConfig(layers=2, d_model=32, nhead=4, max_seq_len=72, dropout=0.0))


def test_uniform_predictor_costs_exactly_nine_bits_per_byte():
    report = evaluate_text(RuleModel(uniform), TEXT, compressors=False, telemetry=False)
    assert report.bits_per_byte == pytest.approx(9.0)
    assert report.data_bits_per_byte == pytest.approx(8.0)
    assert report.parity_bits_per_byte == pytest.approx(1.0)
    assert report.loss_by_phase == pytest.approx([math.log(2)] * 9)
    assert report.n_bytes == len(TEXT.encode())
    assert report.n_predictions == report.n_bytes * 9 - 1  # every bit but the stream's first


def test_bits_per_byte_equals_hand_computation():
    model = tiny_model()
    bits = text_to_bits(TEXT)
    report = evaluate_bits(model, bits, seq_len=72, batch_size=3, compressors=False, telemetry=False)
    # By hand: windows of 72 inputs at stride 72, each predicting the next 72 bits (the last one shorter).
    ce_sum, n, by_phase = 0.0, 0, np.zeros(9)
    counts = np.zeros(9)
    with torch.no_grad():
        for s in range(0, len(bits) - 1, 72):
            w = torch.from_numpy(bits[s : s + 73].astype(np.int64))[None]
            logits = model(w[:, :-1]).logits[0]
            ce = F.cross_entropy(logits.double(), w[0, 1:], reduction="none")
            ce_sum += float(ce.sum())
            n += ce.numel()
            phases = (np.arange(s + 1, s + 1 + ce.numel())) % 9
            np.add.at(by_phase, phases, ce.numpy())
            np.add.at(counts, phases, 1)
    assert n == len(bits) - 1
    assert report.bits_per_byte == pytest.approx(ce_sum / n * 9 / math.log(2), rel=1e-5)
    data_mean = by_phase[:8].sum() / counts[:8].sum()
    assert report.data_bits_per_byte == pytest.approx(data_mean * 8 / math.log(2), rel=1e-5)
    assert report.parity_bits_per_byte == pytest.approx(by_phase[8] / counts[8] / math.log(2), rel=1e-5)
    assert report.loss_by_phase == pytest.approx(list(by_phase / counts), rel=1e-5)
    # An untrained model is close to a coin flip: ~9 bits per byte, nowhere near 0 or 20.
    assert 8.5 < report.bits_per_byte < 9.6


@pytest.mark.parametrize(("n_bytes", "seq_len", "context"), [(1, 72, 0), (8, 72, 0), (9, 72, 9), (50, 72, 0),
                                                             (50, 72, 27), (50, 70, 54), (33, 9, 0)])
def test_every_bit_scored_exactly_once(n_bytes, seq_len, context):
    model = RuleModel(uniform)
    bits = text_to_bits(("abcdefgh" * 10)[:n_bytes])
    report = evaluate_bits(model, bits, seq_len=seq_len, context_bits=context, batch_size=4,
                           compressors=False, telemetry=False)
    assert report.n_predictions == len(bits) - 1
    assert report.seq_len % 9 == 0
    for x in model.inputs:  # windows are frame-aligned and never longer than seq_len
        assert x.shape[1] <= report.seq_len
    starts = window_starts(len(bits), report.seq_len, context)
    assert all(s % FRAME_BITS == 0 for s in starts)


def test_context_bits_give_every_scored_bit_warm_context():
    # "Copy the previous frame" is perfect on a repeated byte once a frame of context is in the window
    # and a coin flip before it. Without warm context each window pays 8 uniform bits; with 9 bits of
    # context only the first window does.
    text = "a" * 100
    n_windows = len(window_starts(900, 72, 0))
    cold = evaluate_text(RuleModel(copy_previous_frame), text, seq_len=72, compressors=False, telemetry=False)
    warm = evaluate_text(RuleModel(copy_previous_frame), text, seq_len=72, context_bits=9, compressors=False,
                         telemetry=False)
    assert cold.bits_per_byte * cold.n_predictions / 9 == pytest.approx(8 * n_windows, rel=1e-4)
    assert warm.bits_per_byte * warm.n_predictions / 9 == pytest.approx(8, rel=1e-4)
    assert warm.n_predictions == cold.n_predictions == 899
    assert warm.bit_accuracy > cold.bit_accuracy


def test_report_includes_telemetry_compressors_and_restores_mode():
    model = tiny_model()
    model.train()
    report = evaluate_text(model, TEXT, context_text="To be, or not to be")
    assert model.training  # restored
    assert set(report.compressors) == {"gzip", "bzip2", "xz"}
    assert all(0 < v < 16 for v in report.compressors.values())
    assert report.compressor_context_bytes == len("To be, or not to be")
    assert report.telemetry is not None
    assert 0.0 <= report.telemetry.C_input <= 1.5
    assert len(report.telemetry.attention_entropy) == 2  # one entry per layer
    assert 0.0 <= report.bit_accuracy <= 1.0
    assert len(report.loss_by_phase) == len(report.accuracy_by_phase) == 9


def test_bf16_autocast_close_to_fp32():
    model = tiny_model()
    fp32 = evaluate_text(model, TEXT, compressors=False, telemetry=False)
    bf16 = evaluate_text(model, TEXT, amp="bf16", compressors=False, telemetry=False)
    assert bf16.precision == "bf16"
    assert bf16.bits_per_byte == pytest.approx(fp32.bits_per_byte, rel=0.02)


def test_max_bytes_limits_bits_and_compressor_input():
    report = evaluate_text(RuleModel(uniform), TEXT, max_bytes=20, telemetry=False)
    assert report.n_bytes == 20
    # 20 bytes of English cost gzip more than 8 bits each (header + no context), never 0.
    assert report.compressors["gzip"] > 8


def test_bad_arguments_are_explained():
    model = RuleModel(uniform, max_seq_len=72)
    bits = text_to_bits(TEXT)
    with pytest.raises(ValueError, match="max_seq_len"):
        evaluate_bits(model, bits, seq_len=90)
    with pytest.raises(ValueError, match="context_bits"):
        evaluate_bits(model, bits, context_bits=10)
    with pytest.raises(ValueError, match="multiple of 9"):
        evaluate_bits(model, bits[:-1])
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_bits(model, bits[:0])


def test_compressor_context_lowers_cost():
    data = TEXT.encode() * 4
    alone = compressor_bpb(data)
    given = compressor_bpb(data, context=data)
    assert set(alone) == {"gzip", "bzip2", "xz"}
    for name in alone:
        assert given[name] < alone[name] / 3, name
    assert compressor_bpb(b"") == {}


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="shared Tiny Shakespeare data not present")
def test_tiny_shakespeare_reference_numbers():
    data = SHAKESPEARE.read_bytes()
    train, val = data[: len(data) - 111_540], data[len(data) - 111_540 :]
    got = compressor_bpb(val, context=train)
    assert got["gzip"] == pytest.approx(3.10, abs=0.01)
    assert got["bzip2"] == pytest.approx(2.40, abs=0.01)
    assert got["xz"] == pytest.approx(2.52, abs=0.01)


def test_act_reversible_chunked_model_evaluates_and_reports_act_telemetry():
    torch.manual_seed(0)
    cfg = ModelConfig(layers=2, d_model=32, nhead=4, max_seq_len=72, dropout=0.0, act=True, reversible=True,
                      chunk_size=36, overlap=9)
    model = build_model(cfg)
    report = evaluate_text(model, TEXT, compressors=False)
    assert 8.0 < report.bits_per_byte < 10.0
    assert report.telemetry is not None and report.telemetry.mean_layers_used is not None
    assert 1.0 <= report.telemetry.mean_layers_used <= 2.0
