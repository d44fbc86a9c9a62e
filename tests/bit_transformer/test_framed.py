"""The framed BitTransformerLM: exact per-bit head, bits-only input, causality, memory features, generation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bit_transformer.bits import text_to_bits
from bit_transformer.config import FRAME_BITS, ModelConfig, RunConfig
from bit_transformer.factory import build_model
from bit_transformer.framed import PARITY_LOGIT, FramedBitTransformerLM, frame_bit_logits
from bit_transformer.generate import generate
from bit_transformer.model import BitTransformerLM

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def framed(seed: int = 0, **kw) -> BitTransformerLM:
    torch.manual_seed(seed)
    cfg = {"arch": "framed", "layers": 2, "d_model": 32, "nhead": 4, "max_seq_len": 90, "dropout": 0.0, **kw}
    return build_model(ModelConfig(**cfg))


def text_bits(n_bits: int, text: str = TEXT) -> torch.Tensor:
    return torch.from_numpy(text_to_bits(text).astype("int64"))[:n_bits][None]


def _spread_halting(model: BitTransformerLM) -> None:
    """Halting biases that make positions stop at different depths (so ACT really varies)."""
    g = torch.Generator().manual_seed(5)
    for block in model.blocks:
        with torch.no_grad():
            block.halt.proj.bias.copy_(torch.randn((), generator=g) * 2)
            block.halt.proj.weight.normal_(0, 0.5, generator=g)


def test_config_selects_the_framed_model_and_names_the_length_fix():
    assert type(framed()) is FramedBitTransformerLM and isinstance(framed(), BitTransformerLM)
    assert type(build_model(ModelConfig(layers=1, d_model=16, nhead=2))) is BitTransformerLM
    with pytest.raises(ValueError, match="build_model"):  # a class that does not match the config refuses
        BitTransformerLM(ModelConfig(arch="framed", layers=1, d_model=16, nhead=2))
    with pytest.raises(ValueError, match="build_model"):
        FramedBitTransformerLM(ModelConfig(layers=1, d_model=16, nhead=2))
    for field, value, fix in (("max_seq_len", 100, "max_seq_len=99"), ("chunk_size", 40, "chunk_size=36"),
                              ("overlap", 4, "overlap=9")):
        kw = {"chunk_size": 72} if field == "overlap" else {}
        with pytest.raises(ValueError, match=f"multiple of 9, e.g. {fix}"):
            ModelConfig(arch="framed", **{**kw, field: value})
    with pytest.raises(ValueError, match="compress_prob=0"):
        RunConfig.model_validate({"model": {"arch": "framed"}, "train": {"compress_prob": 0.5}})


def test_per_bit_losses_sum_to_the_byte_loss_and_parity_costs_nothing():
    model = framed().eval()
    x = text_bits(90)
    with torch.no_grad():
        logits = model(x).logits.double()  # (1, 90, 2): position t predicts bit t + 1
        z = model.trunk(x.reshape(1, 10, FRAME_BITS), start=True)[0][0].double()  # (11, 256)
    ce = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="none")  # ce[t - 1] is bit t's cost
    data = text_to_bits(TEXT)[:90].reshape(10, 9)[:, :8]
    for k in range(1, 10):  # whole frames: bits 9k..9k+8, predicted at positions 9k-1..9k+7
        byte = int("".join(map(str, data[k])), 2)
        byte_loss = -torch.log_softmax(z[k], -1)[byte]
        assert abs(float(ce[9 * k - 1 : 9 * k + 8].sum() - byte_loss)) < 1e-5
        assert float(ce[9 * k + 7]) < 1e-12  # the parity bit
    assert PARITY_LOGIT >= 15


def test_bit_conditionals_are_the_byte_distribution_marginals():
    z = torch.randn(256, dtype=torch.float64)
    frame = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0, 0])
    got = torch.softmax(frame_bit_logits(z, frame).double(), -1)
    probs = torch.softmax(z, -1)
    value = 0
    for j in range(8):
        lo = value << (8 - j)  # bytes with prefix `value` of j bits: [lo, lo + 2^(8-j))
        group = probs[lo : lo + (1 << (8 - j))]
        p1 = group[len(group) // 2 :].sum() / group.sum()
        assert abs(float(got[j, 1]) - float(p1)) < 1e-6
        value = value * 2 + int(frame[j])
    assert float(got[8, 0]) > 1 - 1e-12  # four ones: even parity bit 0, certain


def test_parity_logits_follow_the_data_bits():
    z = torch.zeros(256)
    even = frame_bit_logits(z, torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0]))[8]
    odd = frame_bit_logits(z, torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0]))[8]
    assert float(even[0] - even[1]) == 2 * PARITY_LOGIT and float(odd[1] - odd[0]) == 2 * PARITY_LOGIT


def test_input_is_built_from_the_nine_bit_values_only(monkeypatch):
    model = framed().eval()
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert embeddings == [model.pos_emb] and model.pos_emb.num_embeddings == 90 // 9 + 1  # no byte-id table
    assert model.frame_in[0].in_features == FRAME_BITS
    seen: list[torch.Tensor] = []
    monkeypatch.setattr(model.frame_in, "forward", lambda v: seen.append(v.clone()) or torch.zeros(
        *v.shape[:-1], 32))
    x = text_bits(90)
    model(x)
    (inp,) = seen
    assert inp.shape == (1, 10, FRAME_BITS) and torch.equal(inp, x.reshape(1, 10, 9).float() * 2 - 1)


@pytest.mark.parametrize("kw", [{}, {"chunk_size": 36, "overlap": 9}, {"act": True}, {"reversible": True}])
def test_changing_a_later_bit_never_changes_an_earlier_conditional(kw):
    model = framed(**kw).eval()
    if kw.get("act"):
        _spread_halting(model)
    x = torch.randint(0, 2, (1, 81), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = model(x).logits
        for t in range(0, 81, 4):
            y = x.clone()
            y[0, t] ^= 1
            out = model(y).logits
            assert torch.equal(out[0, :t], base[0, :t]), t  # positions < t never read bit t
            if t < 80:
                assert not torch.equal(out[0, t:], base[0, t:])  # and the model does read it


def test_inputs_ending_inside_a_frame_match_the_whole_window():
    model = framed().eval()
    x = text_bits(90)
    with torch.no_grad():
        full = model(x).logits
        for n in (1, 5, 9, 13, 50, 89):
            assert torch.allclose(model(x[:, :n]).logits, full[:, :n], atol=1e-5), n


@pytest.mark.parametrize("kw", [{"reversible": True, "act": True, "checkpointing": True},
                                {"act": True, "checkpointing": True}, {"reversible": True}])
def test_gradients_with_reversible_act_and_checkpointing_match_plain_autograd(kw):
    model = framed(seed=3, layers=3, **kw).double().train()
    if kw.get("act"):
        _spread_halting(model)
    x = torch.randint(0, 2, (3, 72), generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 2, (3, 72), generator=torch.Generator().manual_seed(5))

    def grads(efficient: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.efficient_backward = efficient
        out = model(x)
        loss = F.cross_entropy(out.logits.reshape(-1, 2), y.reshape(-1)) + 0.01 * out.ponder_cost
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, ref = grads(True), grads(False)
    assert set(fast) == set(ref) and "frame_in.0.weight" in ref and "start" in ref
    for name in ref:
        assert torch.allclose(fast[name], ref[name], atol=1e-9, rtol=1e-6), name


@pytest.mark.parametrize("arch,kw", [
    ("flat", {}), ("flat", {"chunk_size": 36, "overlap": 9, "act": True}), ("flat", {"reversible": True}),
    ("framed", {}), ("framed", {"chunk_size": 36, "overlap": 9, "act": True}), ("framed", {"reversible": True}),
])
def test_cached_and_uncached_generation_give_the_same_text(arch, kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, layers=2, d_model=32, nhead=4, max_seq_len=72, dropout=0.0,
                                         **kw))
    if kw.get("act"):
        _spread_halting(model)
    # 30 new bytes after a 5-byte prompt: the 8-byte window jumps several times (re-prefilled each time).
    a = generate(model, "Hello", max_bytes=30, seed=11, cache=True)
    b = generate(model, "Hello", max_bytes=30, seed=11, cache=False)
    assert a.text == b.text and a.new_bytes == 30 and a.parity_ok
    c = generate(model, "Hello", max_bytes=30, seed=12, cache=True)
    assert c.text != a.text  # the seed matters, so equality above is not a degenerate constant


def test_framed_generation_runs_one_trunk_step_per_byte(monkeypatch):
    model = framed(max_seq_len=900).eval()
    calls: list[int] = []
    real = model.trunk

    def counting(frames, **kw):
        calls.append(frames.shape[1])
        return real(frames, **kw)

    monkeypatch.setattr(model, "trunk", counting)
    generate(model, "Hi", max_bytes=20, seed=0)
    # prefill of the 2 prompt frames, then one frame per new byte, then the telemetry forward over all 22
    assert calls == [2] + [1] * 19 + [22]


def test_framed_model_trains_and_learns_a_repeating_text():
    model = framed(seed=1).train()
    bits = torch.from_numpy(text_to_bits("abcabcabc" * 40).astype("int64"))
    L = 72
    windows = torch.stack([bits[i : i + L + 1] for i in range(0, len(bits) - L - 1, 27)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = model(windows[:, :-1])
        loss = F.cross_entropy(out.logits.reshape(-1, 2), windows[:, 1:].reshape(-1))
        first = first or float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) * 9 / math.log(2) < 1.5 < first * 9 / math.log(2)  # bits per byte


@pytest.mark.parametrize("grow", [{"layers": 3}, {"d_model": 64, "nhead": 8}, {"d_model": 48, "nhead": 6,
                                                                               "max_seq_len": 180}])
def test_scale_up_preserves_the_framed_function(grow):
    from bit_transformer.scale import scale_up

    model = framed(act=True)
    new, cfg, report = scale_up(model, **grow)
    assert type(new) is FramedBitTransformerLM and cfg.arch == "framed"
    assert report.params_after > report.params_before and report.max_logit_change < 1e-4
    x = text_bits(90)
    with torch.no_grad():
        assert torch.allclose(new.eval()(x).logits, model.eval()(x).logits, atol=1e-4)


def test_int8_export_and_qat_work_on_the_framed_model(tmp_path):
    from bit_transformer.quantization import export_int8, load_int8, prepare_qat

    model = framed().eval()
    x = text_bits(90)
    export_int8(model, tmp_path / "m")
    q, _ = load_int8(tmp_path / "m")
    assert type(q) is FramedBitTransformerLM
    with torch.no_grad():
        ref, got = model(x).logits, q(x).logits
    assert (got - ref).abs().max() < 0.1 and not torch.equal(got, ref)  # quantized, and close
    assert generate(q, "Hi", max_bytes=4, seed=0).parity_ok
    qat = prepare_qat(framed().train())
    out = qat(x[:, :-1])
    F.cross_entropy(out.logits.reshape(-1, 2), x[0, 1:]).backward()
    assert qat.blocks[0].attn.qkv.weight.grad is not None


def test_generation_window_jumps_in_whole_frames_and_keeps_three_quarters():
    from bit_transformer.generate import context_start

    starts = set()
    for n in range(1, 2000):
        s = context_start(n, 576)
        assert s % FRAME_BITS == 0 and n - s <= 576
        if n > 576:
            assert n - s > 576 * 3 // 4
        starts.add(s)
    assert sorted(starts)[:3] == [0, 144, 288]  # a jump of a quarter window, not one frame
