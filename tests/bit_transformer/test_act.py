"""Adaptive computation time: Graves halting, ponder cost, telemetry, early exit, gradients."""

from __future__ import annotations

import pytest
import torch

from bit_transformer import BitTransformerLM

from .autograd_helpers import grads, make_model, max_rel_err, random_bits, reference_grads, spread_halting, tiny_cfg


def graves_reference(model: BitTransformerLM, bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and ponder cost of the standard stack, with the halting rule written per position."""
    cfg = model.cfg
    h = model.embed(bits)
    B, T, _ = h.shape
    halted_at = [[None] * T for _ in range(B)]
    mass = [[0.0] * T for _ in range(B)]
    out = torch.zeros_like(h)
    ponder = 0.0
    for layer, block in enumerate(model.blocks):
        new = block(h)
        for b in range(B):
            for t in range(T):
                if halted_at[b][t] is not None:
                    new[b, t] = h[b, t]  # frozen after its halt
        p = block.halt(new)
        for b in range(B):
            for t in range(T):
                if halted_at[b][t] is not None:
                    continue
                pbt = float(p[b, t])
                if mass[b][t] + pbt >= cfg.act_threshold or layer == cfg.layers - 1:
                    remainder = 1.0 - mass[b][t]
                    out[b, t] += remainder * new[b, t]
                    halted_at[b][t] = layer
                    ponder += layer + 1 + remainder
                else:
                    out[b, t] += pbt * new[b, t]
                    mass[b][t] += pbt
        h = new
    return model.head(model.stack.norm(out)), torch.tensor(ponder / (B * T))


def test_standard_act_matches_graves_reference():
    model = make_model(tiny_cfg(act=True, layers=4, act_threshold=0.9)).eval()
    spread_halting(model)
    bits = random_bits(2, 27)
    with torch.no_grad():
        out = model(bits, return_telemetry=True)
        logits, ponder = graves_reference(model, bits)
    used = out.telemetry.layers_used
    assert len(used.unique()) >= 3  # positions halt at different depths
    assert torch.allclose(out.logits, logits, atol=1e-5)
    assert out.ponder_cost.item() == pytest.approx(ponder.item(), abs=1e-5)


@pytest.mark.parametrize("reversible", [False, True])
def test_ponder_cost_extremes(reversible):
    model = make_model(tiny_cfg(act=True, layers=4, reversible=reversible)).eval()
    bits = random_bits()
    for bias, layers_used, ponder in ((30.0, 1.0, 2.0), (-30.0, 4.0, 5.0)):
        for block in model.blocks:
            torch.nn.init.constant_(block.halt.proj.bias, bias)
        with torch.no_grad():
            out = model(bits, return_telemetry=True)
        rec = out.telemetry
        assert torch.all(rec.layers_used == layers_used)
        assert out.ponder_cost.item() == pytest.approx(ponder, abs=1e-4)  # N + R with R = 1 - sum p
        assert rec.halting.shape == (2, 45, 4)
        assert torch.all(rec.halting[..., int(layers_used):] == 0)  # nothing computed after the halt


def test_fresh_model_uses_every_layer():
    model = make_model(tiny_cfg(act=True, layers=4)).eval()
    with torch.no_grad():
        rec = model(random_bits(), return_telemetry=True).telemetry
    assert torch.all(rec.layers_used == 4)
    assert rec.halting[..., 0].mean().item() == pytest.approx(1 / 8, abs=0.02)  # p = 1 / (2 * layers)


def _count_attention_calls(model: BitTransformerLM) -> list[int]:
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


@pytest.mark.parametrize("reversible", [False, True])
def test_early_exit_skips_layers_with_identical_logits(reversible):
    model = make_model(tiny_cfg(act=True, layers=4, reversible=reversible)).eval()
    spread_halting(model, bias=-1.0)
    with torch.no_grad():
        model.blocks[1].halt.proj.bias.fill_(30.0)  # every position has halted after layer 2 of 4
    bits = random_bits()
    calls = _count_attention_calls(model)
    full = model(bits, return_telemetry=True)  # grad enabled: no early exit
    assert calls == [1, 1, 1, 1]
    with torch.no_grad():
        fast = model(bits, return_telemetry=True)
    assert calls == [2, 2, 1, 1]  # layers 3 and 4 skipped
    assert torch.equal(fast.logits, full.logits.detach())
    assert fast.ponder_cost.item() == pytest.approx(full.ponder_cost.item(), abs=1e-7)
    assert torch.equal(fast.telemetry.layers_used, full.telemetry.layers_used)
    assert len(fast.telemetry.attention) == 2
    assert torch.all(fast.telemetry.halting[..., 2:] == 0)
    used = fast.telemetry.layers_used
    assert used.max() == 2 and used.min() >= 1


@pytest.mark.parametrize("reversible", [False, True])
@pytest.mark.parametrize("bias", [None, 30.0], ids=["mixed", "all-halt-at-1"])
def test_every_parameter_gets_a_gradient(reversible, bias):
    """DDP without find_unused_parameters needs a gradient for every parameter, every step."""
    model = make_model(tiny_cfg(act=True, layers=3, reversible=reversible))
    spread_halting(model, bias=bias or 0.0)
    bits = random_bits()
    got = grads(model, bits)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(got) == sorted(names)
    assert got["stack.blocks.2.halt.proj.weight"].abs().max() == 0  # the last halting unit is never used


def test_standard_act_gradcheck_float64():
    model = make_model(tiny_cfg(layers=3, d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, act=True,
                                act_threshold=0.8)).double()
    spread_halting(model, std=300.0, bias=0.5)
    bits = random_bits(1, 9)
    params = list(model.parameters())
    with torch.no_grad():
        assert len(model(bits, return_telemetry=True).telemetry.layers_used.unique()) >= 2

    def fn(*_):
        out = model(bits)
        return out.logits, out.ponder_cost

    assert torch.autograd.gradcheck(fn, tuple(params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_ponder_gradient_pushes_halting_up_and_training_on_it_reduces_depth():
    model = make_model(tiny_cfg(act=True, layers=4, dropout=0.0))
    bits = random_bits()
    model(bits).ponder_cost.backward()
    for block in model.blocks[:-1]:
        assert block.halt.proj.bias.grad.item() < 0  # dR/dp = -1 for every layer before the halt
    halting = [p for n, p in model.named_parameters() if ".halt." in n]
    opt = torch.optim.Adam(halting, lr=0.3)
    for _ in range(10):
        opt.zero_grad()
        model(bits).ponder_cost.backward()
        opt.step()
    with torch.no_grad():
        assert model(bits, return_telemetry=True).telemetry.layers_used.mean() < 3.0


def test_standard_act_with_dropout_matches_itself_under_reference_mode():
    # reference mode only matters for checkpointing/reversible; standard ACT must be unaffected by it
    model = make_model(tiny_cfg(act=True, layers=3))
    spread_halting(model)
    bits = random_bits()
    assert max_rel_err(grads(model, bits), reference_grads(model, bits)) == 0.0
