"""BitTransformerLM core: shapes, embeddings, causality, bidirectional mode, compressed entry point."""

from __future__ import annotations

import pytest
import torch

from bit_transformer.bits import batch_text_to_bits
from bit_transformer.compression import compress_batch, compress_bits
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM, ModelOutput


def _model(seed: int = 0, **kw) -> BitTransformerLM:
    torch.manual_seed(seed)
    base = {"layers": 2, "d_model": 16, "nhead": 2, "dropout": 0.0, "max_seq_len": 72}
    return build_model(ModelConfig(**{**base, **kw})).eval()


def test_forward_shapes_and_output_type():
    model = _model()
    bits = torch.randint(0, 2, (3, 45))
    out = model(bits)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 45, 2) and out.logits.dtype == torch.float32
    assert out.ponder_cost.shape == () and float(out.ponder_cost) == 0.0
    assert out.telemetry is None
    assert torch.isfinite(out.logits).all()


def test_too_long_input_is_rejected_with_the_limit():
    with pytest.raises(ValueError, match="max_seq_len is 72"):
        _model()(torch.zeros(1, 81, dtype=torch.long))


def test_phase_embedding_is_position_mod_nine():
    model = _model()
    with torch.no_grad():
        model.bit_emb.weight.zero_()
        model.pos_emb.weight.zero_()
        h = model.embed(torch.zeros(1, 27, dtype=torch.long))
    assert torch.equal(h[0, 0], h[0, 9]) and torch.equal(h[0, 4], h[0, 22])
    assert not torch.equal(h[0, 0], h[0, 1])
    torch.testing.assert_close(h[0, 8], model.phase_emb.weight[8])


def test_bit_embedding_changes_the_input():
    model = _model()
    zeros, ones = torch.zeros(1, 9, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)
    diff = model.embed(ones) - model.embed(zeros)
    torch.testing.assert_close(diff[0, 3], model.bit_emb.weight[1] - model.bit_emb.weight[0])


@pytest.mark.parametrize("chunk", [None, 9])
def test_causal_mode_hides_the_future(chunk):
    model = _model(seed=1, chunk_size=chunk, overlap=3 if chunk else 0)
    bits = torch.randint(0, 2, (2, 45), generator=torch.Generator().manual_seed(0))
    j = 30
    changed = bits.clone()
    changed[:, j] ^= 1
    with torch.no_grad():
        a, b = model(bits).logits, model(changed).logits
    torch.testing.assert_close(a[:, :j], b[:, :j], atol=0, rtol=0)  # earlier positions cannot see bit j
    assert (a[:, j:] - b[:, j:]).abs().max() > 1e-6  # bit j itself and later ones do


def test_bidirectional_mode_sees_the_future_and_differs_from_causal():
    causal = _model(seed=2)
    bidir = _model(seed=2, causal=False)
    # same weights: only the attention pattern differs (the bidirectional model's MASK vector is unused here)
    assert bidir.load_state_dict(causal.state_dict(), strict=False).missing_keys == ["mask_emb.weight"]
    bits = torch.randint(0, 2, (2, 36), generator=torch.Generator().manual_seed(1))
    changed = bits.clone()
    changed[:, 30] ^= 1
    with torch.no_grad():
        c, d = causal(bits).logits, bidir(bits).logits
        d2 = bidir(changed).logits
    assert (d[:, :30] - d2[:, :30]).abs().max() > 1e-6  # earlier positions now see the future bit
    assert (c - d).abs().max() > 1e-6


def test_one_layer_last_position_is_the_same_in_both_modes():
    # with one layer the last query attends to every key in both modes, so only earlier rows may differ
    causal, bidir = _model(seed=5, layers=1), _model(seed=5, layers=1, causal=False)
    bidir.load_state_dict(causal.state_dict(), strict=False)  # all but the unused MASK vector
    bits = torch.randint(0, 2, (2, 18), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        c, d = causal(bits).logits, bidir(bits).logits
    torch.testing.assert_close(c[:, -1], d[:, -1], atol=1e-5, rtol=1e-5)
    assert (c[:, :-1] - d[:, :-1]).abs().max() > 1e-6


def test_gradients_reach_every_parameter():
    model = _model().train()
    bits = torch.randint(0, 2, (2, 27))
    out = model(bits)
    torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 2), bits[:, 1:].reshape(-1)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_telemetry_record_is_optional_and_matches_plain_forward():
    model = _model(seed=3)
    bits = torch.randint(0, 2, (2, 27))
    with torch.no_grad():
        plain = model(bits)
        rich = model(bits, return_telemetry=True)
    torch.testing.assert_close(plain.logits, rich.logits, atol=1e-5, rtol=1e-5)
    record = rich.telemetry
    assert len(record.attention) == 2
    for stats in record.attention:
        assert stats.entropy.shape == (2,)
        assert (stats.entropy >= 0).all() and (stats.entropy <= torch.log2(torch.tensor(27.0)) + 1e-4).all()
    assert record.halting is None and record.layers_used is None


def test_forward_compressed_gives_the_raw_logits():
    model = _model(seed=4)
    raw = batch_text_to_bits(["aaaa\x00\x00\x00\x00", "bits ok"], pad_to=72)
    rows = compress_batch(raw)
    with torch.no_grad():
        expected = model(raw, return_telemetry=True)
        got = model.forward_compressed(rows, return_telemetry=True)
    assert torch.equal(got.logits, expected.logits)
    assert got.telemetry is not None
    same_length = torch.stack([compress_bits(torch.zeros(72, dtype=torch.long))] * 2)  # a 2-D tensor of rows
    with torch.no_grad():
        torch.testing.assert_close(model.forward_compressed(same_length).logits, model(torch.zeros(2, 72)).logits)
    with pytest.raises(ValueError, match="different lengths"):
        model.forward_compressed([compress_bits(torch.zeros(9)), compress_bits(torch.zeros(18))])
