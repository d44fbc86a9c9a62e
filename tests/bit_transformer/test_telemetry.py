"""Telemetry K/C/S on sequences with known answers, summaries of a forward pass, and the loss terms."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bit_transformer.attention import AttentionStats
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.model import ForwardTelemetry
from bit_transformer.telemetry import (
    TelemetrySummary,
    binary_entropy,
    lz76_phrases,
    lz_complexity,
    lz_proxy,
    negentropy,
    summarize,
    symbiosis,
    telemetry_loss,
)

N = 576
CONST0, CONST1 = torch.zeros(N), torch.ones(N)
ALT = (torch.arange(N) % 2).float()
RANDOM = torch.randint(0, 2, (8, 4096), generator=torch.Generator().manual_seed(0)).float()
BLOCK = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1)).float()
REPEATED = BLOCK.repeat(N // 64)


def _h2(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# ---- K --------------------------------------------------------------------------------------------------------


def test_negentropy_known_answers():
    assert float(negentropy(CONST0)) == 1.0 and float(negentropy(CONST1)) == 1.0
    assert float(negentropy(ALT)) == pytest.approx(0.0, abs=1e-6)
    assert negentropy(RANDOM).max() < 0.002  # p1 ~ 0.5 +- 0.008
    quarter = torch.tensor([1.0, 0, 0, 0] * 16)
    assert float(negentropy(quarter)) == pytest.approx(1 - _h2(0.25), abs=1e-6)  # 0.18872
    assert float(negentropy(REPEATED)) == pytest.approx(float(negentropy(BLOCK)), abs=1e-6)
    assert negentropy(torch.stack([CONST0, ALT])).tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_negentropy_is_differentiable_on_probabilities():
    probs = torch.tensor([0.9, 0.8, 0.7, 1.0], requires_grad=True)
    k = negentropy(probs)
    k.backward()
    assert k.item() == pytest.approx(1 - _h2(0.85), abs=1e-6)
    assert torch.isfinite(probs.grad).all() and (probs.grad > 0).all()  # more ones -> more ordered
    edge = torch.tensor([1.0, 1.0], requires_grad=True)
    negentropy(edge).backward()
    assert torch.isfinite(edge.grad).all()  # clamped: no inf at p = 1


def test_binary_entropy_values():
    got = binary_entropy(torch.tensor([0.0, 0.5, 1.0, 0.11]))
    assert got.tolist() == pytest.approx([0.0, 1.0, 0.0, _h2(0.11)], abs=1e-6)


# ---- C --------------------------------------------------------------------------------------------------------


def test_lz76_phrase_count_known_answers():
    # Kaspar & Schuster's example: 0 | 001 | 10 | 100 | 1000 | 101
    assert lz76_phrases([int(c) for c in "0001101001000101"]) == 6
    assert lz76_phrases([]) == 0 and lz76_phrases([1]) == 1
    assert lz76_phrases(CONST0) == 2  # 0 | 000...0
    assert lz76_phrases(ALT) == 3  # 0 | 1 | 0101...
    assert lz76_phrases(REPEATED) <= lz76_phrases(BLOCK) + 1  # repeats copy the first block in one phrase


def _lz76_reference(s: str) -> int:
    """Textbook LZ76: each phrase extends while it can still be copied from a start before it."""
    count, pos = (1, 1) if s else (0, 0)
    while pos < len(s):
        k = 1
        while pos + k <= len(s) and s[pos : pos + k] in s[: pos + k - 1]:
            k += 1
        count += 1
        pos += k
    return count


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text("01", max_size=120), st.text("01", min_size=1, max_size=12).map(lambda b: b * 9)))
def test_lz76_matches_the_textbook_definition(s):
    assert lz76_phrases([int(c) for c in s]) == _lz76_reference(s)


def test_lz_complexity_known_answers():
    scale = math.log2(N) / N
    assert lz_complexity(CONST0) == pytest.approx(2 * scale)  # 0.0318
    assert lz_complexity(ALT) == pytest.approx(3 * scale)  # 0.0478
    assert lz_complexity(REPEATED) < 0.3  # about 16 phrases
    random_c = lz_complexity(RANDOM)
    assert random_c.shape == (8,)
    assert 0.95 < float(random_c.mean()) < 1.12 and float(random_c.min()) > 0.9
    assert lz_complexity(BLOCK) > 0.8  # the block itself is random-looking
    assert lz_complexity([0]) == 0.0 and lz_complexity([]) == 0.0


def test_lz_complexity_batched_and_thresholds_probabilities():
    probs = torch.stack([CONST0 * 0.2, ALT * 0.9 + 0.05])
    got = lz_complexity(probs)
    assert isinstance(got, torch.Tensor) and got.shape == (2,)
    assert got.tolist() == pytest.approx([lz_complexity(CONST0), lz_complexity(ALT)])
    assert lz_complexity(torch.zeros(2, 3, 9)).shape == (2, 3)
    assert isinstance(lz_complexity(ALT), float)


# ---- S --------------------------------------------------------------------------------------------------------


def test_symbiosis_known_answers():
    bits = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert float(symbiosis(bits, bits)) == pytest.approx(1.0, abs=1e-5)  # perfect predictions
    assert float(symbiosis(torch.full((4,), 0.5), bits)) == pytest.approx(0.5, abs=1e-6)  # coin flip
    assert float(symbiosis(torch.tensor([0.8, 0.4]), torch.tensor([1.0, 0.0]))) == pytest.approx(
        math.sqrt(0.8 * 0.6), abs=1e-6
    )  # geometric mean of the probabilities given to the real bits
    assert float(symbiosis(1 - bits, bits)) < 1e-5  # confidently wrong
    soft = torch.tensor([0.3, 0.7])
    assert float(symbiosis(soft, soft)) == pytest.approx(1.0, abs=1e-6)  # soft target: KL = 0 when equal
    assert symbiosis(torch.full((3, 5), 0.5), torch.zeros(3, 5)).shape == (3,)
    with pytest.raises(ValueError, match="same shape"):
        symbiosis(torch.zeros(3), torch.zeros(4))


def test_symbiosis_is_differentiable():
    q = torch.tensor([0.6, 0.3, 0.9], requires_grad=True)
    bits = torch.tensor([1.0, 0.0, 1.0])
    symbiosis(q, bits).backward()
    assert (q.grad[[0, 2]] > 0).all() and q.grad[1] < 0  # moving toward the observed bit raises S


# ---- summarize ------------------------------------------------------------------------------------------------


def _logits_for(p1: torch.Tensor) -> torch.Tensor:
    p1 = p1.clamp(1e-6, 1 - 1e-6)
    return torch.stack([torch.zeros_like(p1), torch.log(p1) - torch.log1p(-p1)], dim=-1)


def test_summarize_with_a_perfect_alternating_predictor():
    bits = ALT[None, :90].long()
    next_bit = 1.0 - ALT[:90]  # position t predicts bit t + 1 = 1 - bit t
    summary = summarize(bits, _logits_for(next_bit)[None], None)
    assert summary.K_input == pytest.approx(0.0, abs=1e-6)
    assert summary.C_input == pytest.approx(3 * math.log2(90) / 90)
    s_value = summary.S
    assert s_value == pytest.approx(1.0, abs=1e-4)
    assert summary.K_pred == pytest.approx(0.0, abs=1e-4)
    assert summary.attention_entropy == [] and summary.mean_layers_used is None and summary.halting_mean is None
    uniform = summarize(bits, torch.zeros(1, 90, 2), None)
    s_value = uniform.S
    assert s_value == pytest.approx(0.5, abs=1e-6) and uniform.K_pred == pytest.approx(0.0, abs=1e-6)


def test_summarize_reads_the_forward_record():
    torch.manual_seed(0)
    model = build_model(ModelConfig(layers=3, d_model=16, nhead=4, dropout=0.0, max_seq_len=36)).eval()
    bits = torch.randint(0, 2, (2, 36))
    out = model(bits, return_telemetry=True)
    summary = summarize(bits, out.logits, out.telemetry)
    assert len(summary.attention_entropy) == 3 and all(len(h) == 4 for h in summary.attention_entropy)
    expected = torch.stack([s.entropy for s in out.telemetry.attention])
    torch.testing.assert_close(torch.tensor(summary.attention_entropy), expected)
    assert (expected > 3.0).all() and (expected <= math.log2(36)).all()  # near-uniform at init, causal rows
    assert 0 < summary.S < 1 and 0 <= summary.K_input <= 1
    assert TelemetrySummary.model_validate_json(summary.model_dump_json()) == summary


def test_summarize_act_fields():
    record = ForwardTelemetry(
        attention=[AttentionStats(entropy=torch.tensor([1.0, 2.0]))],
        halting=torch.tensor([[[0.5, 0.5], [1.0, 0.0]]]),
        layers_used=torch.tensor([[2.0, 1.0]]),
    )
    summary = summarize(torch.tensor([[0, 1]]), torch.zeros(1, 2, 2), record)
    assert summary.attention_entropy == [[1.0, 2.0]]
    assert summary.mean_layers_used == pytest.approx(1.5) and summary.halting_mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2 bits"):
        summarize(torch.tensor([[1]]), torch.zeros(1, 1, 2), None)


# ---- telemetry_loss -------------------------------------------------------------------------------------------


def test_telemetry_loss_terms_match_their_formulas():
    torch.manual_seed(0)
    logits = torch.randn(3, 20, 2, requires_grad=True)
    bits = torch.randint(0, 2, (3, 20))
    assert float(telemetry_loss(logits, bits, 0, 0, 0)) == 0.0
    assert not telemetry_loss(logits, bits, 0, 0, 0).requires_grad
    q = torch.softmax(logits.detach(), -1)[..., 1][:, :-1]
    b = bits[:, 1:].float()
    s_term = telemetry_loss(logits, bits, lambda_S=1.0)
    assert s_term.item() == pytest.approx(float((1 - symbiosis(q, b)).mean()), abs=1e-5)
    k_term = telemetry_loss(logits, bits, lambda_K=2.0)
    assert k_term.item() == pytest.approx(float(2 * ((negentropy(q) - negentropy(b)) ** 2).mean()), abs=1e-6)
    c_term = telemetry_loss(logits, bits, lambda_C=0.5)
    assert c_term.item() == pytest.approx(float(0.5 * (1 - lz_proxy(q)).mean()), abs=1e-6)
    total = telemetry_loss(logits, bits, 2.0, 0.5, 1.0)
    assert total.item() == pytest.approx((s_term + k_term + c_term).item(), abs=1e-5)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert logits.grad[:, -1].abs().sum() == 0  # the last position has no target among the input bits


def test_telemetry_loss_aligned_targets_and_known_values():
    bits = torch.tensor([[0, 1, 0, 1, 0, 1, 0, 1, 0]])
    perfect = _logits_for(1.0 - bits.float())  # t predicts 1 - bit t = bit t + 1
    assert float(telemetry_loss(perfect, bits, lambda_S=1.0)) == pytest.approx(0.0, abs=1e-4)
    assert float(telemetry_loss(perfect[:, :-1], bits[:, 1:], lambda_S=1.0, aligned=True)) == pytest.approx(
        0.0, abs=1e-4
    )
    uniform = torch.zeros(1, 9, 2)
    assert float(telemetry_loss(uniform, bits, lambda_S=1.0)) == pytest.approx(0.5, abs=1e-6)
    assert float(telemetry_loss(uniform, bits, lambda_C=1.0)) == pytest.approx(0.0, abs=1e-6)  # max entropy
    assert float(telemetry_loss(uniform, bits, lambda_K=1.0)) == pytest.approx(0.0, abs=1e-6)  # both balanced
    assert float(telemetry_loss(perfect[0], bits[0], lambda_S=1.0)) == pytest.approx(0.0, abs=1e-4)  # unbatched
