"""The CPU dropout trap: residual dropout must not send attention to SDPA's slow math kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bit_transformer import attention
from bit_transformer.attention import kernel_notes
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM


@pytest.fixture
def dropout_ps(monkeypatch) -> list[float]:
    seen: list[float] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        seen.append(dropout_p)
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    return seen


def _model(**kw) -> BitTransformerLM:
    torch.manual_seed(0)
    return build_model(ModelConfig(layers=2, d_model=16, nhead=2, max_seq_len=36, **kw)).train()


def test_default_training_keeps_attention_dropout_off_but_residual_dropout_on(dropout_ps):
    model = _model()
    assert model.cfg.dropout == 0.1 and model.cfg.attn_dropout == 0.0
    bits = torch.randint(0, 2, (2, 36), generator=torch.Generator().manual_seed(1))
    a, b = model(bits).logits, model(bits).logits
    assert dropout_ps and all(p == 0.0 for p in dropout_ps)  # the fused kernel's condition
    assert not torch.allclose(a, b)  # residual/embedding dropout still regularises


def test_attn_dropout_setting_reaches_sdpa_only_in_training(dropout_ps):
    model = _model(attn_dropout=0.2)
    bits = torch.randint(0, 2, (2, 36))
    model(bits)
    assert dropout_ps == [0.2, 0.2]
    model.eval()(bits)
    assert dropout_ps[2:] == [0.0, 0.0]


def test_kernel_notes_warn_only_where_the_kernel_is_slow():
    assert kernel_notes(ModelConfig(), "cpu") == []
    slow = ModelConfig(attn_dropout=0.1)
    (note,) = kernel_notes(slow, "cpu")
    assert "model.attn_dropout=0.1" in note and "set model.attn_dropout=0" in note
    assert kernel_notes(slow, "cuda") == []  # flash/efficient kernels take dropout on GPU
    masked = kernel_notes(ModelConfig(chunk_size=144, overlap=18), "cpu")
    assert len(masked) == 1 and "overlap" in masked[0]
