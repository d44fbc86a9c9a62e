"""Reversible blocks: gradients equal ordinary autograd of the same coupling, memory flat in depth."""

from __future__ import annotations

import pytest
import torch

from bit_transformer import ModelConfig
from bit_transformer.reversible import RevStackFunction, StackSpec

from .autograd_helpers import (
    grads,
    loss_of,
    make_model,
    max_rel_err,
    random_bits,
    reference_grads,
    saved_activation_bytes,
    spread_halting,
    tiny_cfg,
)

ATTENTION_MODES = [
    pytest.param(dict(causal=True), id="causal-full"),
    pytest.param(dict(causal=False), id="bidirectional-full"),
    pytest.param(dict(causal=True, chunk_size=9, overlap=4), id="causal-chunked"),
    pytest.param(dict(causal=False, chunk_size=9, overlap=4), id="bidirectional-chunked"),
]


@pytest.mark.parametrize("mode", ATTENTION_MODES)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_reversible_grads_match_plain_autograd(mode, dropout):
    model = make_model(tiny_cfg(reversible=True, dropout=dropout, **mode))
    bits = random_bits()
    ref = reference_grads(model, bits)
    got = grads(model, bits)
    assert len(got) == sum(1 for _ in model.parameters())
    assert max_rel_err(got, ref) < 1e-5


@pytest.mark.parametrize("mode", ATTENTION_MODES[1:3])
def test_reversible_act_grads_match_plain_autograd(mode):
    model = make_model(tiny_cfg(reversible=True, act=True, layers=4, act_threshold=0.9, **mode))
    spread_halting(model)
    bits = random_bits()
    with torch.no_grad():
        used = model(bits, return_telemetry=True).telemetry.layers_used
    assert 1 <= used.min() < used.max() <= 4 and len(used.unique()) >= 3  # halting really varies
    ref = reference_grads(model, bits)
    got = grads(model, bits)
    assert max_rel_err(got, ref) < 1e-5
    # the halting units and the ponder cost carry gradient
    assert got["stack.blocks.0.halt.proj.weight"].abs().max() > 0


def _double_stack(act: bool):
    cfg = ModelConfig(layers=2, d_model=8, nhead=2, dim_feedforward=16, max_seq_len=18, dropout=0.0,
                      reversible=True, act=act, act_threshold=0.8)
    model = make_model(cfg).double()
    if act:
        spread_halting(model, std=3.0, bias=0.5)
    x = (torch.randn(1, 9, 8, dtype=torch.float64) * 0.5).requires_grad_()
    params = [p for b in model.blocks for p in b.parameters()]
    spec = StackSpec(list(model.blocks), cfg.act_threshold if act else None, params=[list(b.parameters())
                                                                                      for b in model.blocks])
    return spec, x, params


@pytest.mark.parametrize("act", [False, True], ids=["plain", "act"])
def test_reversible_gradcheck_float64(act):
    spec, x, params = _double_stack(act)

    def fn(x, *ps):
        return RevStackFunction.apply(x, spec, *ps)

    # fast_mode checks random projections of the full Jacobian (every input and output) against finite
    # differences; the slow mode takes minutes on this machine for a few thousand inputs.
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: fn(x, *params), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_reversible_bf16_autocast_matches_plain():
    model = make_model(tiny_cfg(reversible=True, act=True, layers=4, chunk_size=9, overlap=3))
    spread_halting(model, bias=-1.0)
    bits = random_bits()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = reference_grads(model, bits)
        got = grads(model, bits)
    # A recomputed branch can round differently in bf16 than in the forward (measured here: ~2e-7).
    assert max_rel_err(got, ref) < 1e-3
    assert all(torch.isfinite(g).all() for g in got.values())


def test_backward_leaves_rng_state_as_after_forward():
    model = make_model(tiny_cfg(reversible=True))
    bits = random_bits()
    torch.manual_seed(5)
    loss = loss_of(model, bits)
    after_forward = torch.get_rng_state().clone()
    loss.backward()
    assert torch.equal(torch.get_rng_state(), after_forward)


def test_reversible_activation_memory_flat_in_depth():
    bits = random_bits(2, 63)
    size = {}
    for rev in (False, True):
        for layers in (2, 8):
            size[rev, layers] = saved_activation_bytes(make_model(tiny_cfg(layers=layers, reversible=rev)), bits)
    assert size[True, 8] <= 1.05 * size[True, 2]  # flat: only the last streams are kept
    assert size[False, 8] > 3 * size[False, 2]  # the standard stack grows with depth
    assert size[True, 8] < 0.2 * size[False, 8]


def test_zeroed_residual_projections_make_reversible_blocks_identity():
    model = make_model(tiny_cfg(reversible=True, layers=2)).eval()
    bits = random_bits()
    with torch.no_grad():
        for block in model.blocks:
            for proj in block.residual_projections:
                proj.weight.zero_()
                proj.bias.zero_()
        expected = model.head(model.stack.norm(model.embed(bits)))
        assert torch.allclose(model(bits).logits, expected, atol=1e-6)


def test_reversible_telemetry_while_training_keeps_gradients():
    model = make_model(tiny_cfg(reversible=True, act=True, layers=3))
    bits = random_bits()
    plain = grads(model, bits)
    with_telemetry = grads(model, bits, return_telemetry=True)
    assert max_rel_err(with_telemetry, plain) < 1e-6
    torch.manual_seed(1)
    record = model(bits, return_telemetry=True).telemetry
    assert len(record.attention) == 3 and record.halting.shape == (2, 45, 3)
    assert record.layers_used.shape == (2, 45)


def test_reversible_eval_no_grad_equals_grad_mode():
    model = make_model(tiny_cfg(reversible=True, causal=False, chunk_size=9)).eval()
    bits = random_bits()
    with torch.no_grad():
        a = model(bits).logits
    b = model(bits).logits
    assert torch.allclose(a, b, atol=1e-6)
    assert b.requires_grad


@pytest.mark.parametrize("reversible", [False, True])
def test_training_step_without_telemetry_computes_no_attention_statistics(reversible, monkeypatch):
    from bit_transformer.attention import SelfAttention

    def boom(*_a, **_k):
        raise AssertionError("attention statistics computed without telemetry")

    monkeypatch.setattr(SelfAttention, "_full_stats", boom)
    model = make_model(tiny_cfg(reversible=reversible, act=True))  # full attention: attn_logging is on
    assert model.cfg.attn_logging
    loss_of(model, random_bits()).backward()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("act", [False, True], ids=["plain", "act"])
@pytest.mark.parametrize("mode", ATTENTION_MODES[::3])
def test_cuda_reversible_grads_match_plain_autograd(amp, act, mode):
    """Fused SDPA kernels with dropout (Philox RNG on the GPU) must replay in the recomputation."""
    model = make_model(tiny_cfg(reversible=True, act=act, layers=4, d_model=64, max_seq_len=288, **mode)).cuda()
    if act:
        spread_halting(model, bias=-1.0)
    bits = random_bits(4, 270).cuda()
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        ref = reference_grads(model, bits)
        got = grads(model, bits)
        torch.manual_seed(5)
        loss = loss_of(model, bits)
        after_forward = torch.cuda.get_rng_state()
        loss.backward()
        assert torch.equal(torch.cuda.get_rng_state(), after_forward)
    assert max_rel_err(got, ref) < (1e-5 if amp is None else 1e-2)
