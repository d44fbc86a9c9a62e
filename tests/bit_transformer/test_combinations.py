"""All eight (reversible, act, checkpointing) combinations train with correct gradients."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from .autograd_helpers import loss_of, make_model, max_rel_err, random_bits, spread_halting, tiny_cfg

COMBOS = [
    pytest.param(r, a, c, id=f"rev{int(r)}-act{int(a)}-ckpt{int(c)}")
    for r, a, c in itertools.product([False, True], repeat=3)
]


def _step_grads(model, bits, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = loss_of(model, bits)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(("reversible", "act", "checkpointing"), COMBOS)
def test_combination_trains_with_reference_gradients(reversible, act, checkpointing):
    cfg = tiny_cfg(layers=3, reversible=reversible, act=act, checkpointing=checkpointing, act_threshold=0.9,
                   ponder_weight=0.01, dropout=0.1)
    model = make_model(cfg)
    if act:
        spread_halting(model, std=30.0)
    bits = random_bits(4, 45)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for step in range(6):
        # reference: the same parameters and dropout masks through ordinary autograd
        model.efficient_backward = False
        ref_loss, ref = _step_grads(model, bits, seed=step)
        model.efficient_backward = True
        loss, got = _step_grads(model, bits, seed=step)
        assert math.isfinite(loss) and loss == pytest.approx(ref_loss, abs=1e-6)
        assert all(torch.isfinite(g).all() for g in got.values())
        assert max_rel_err(got, ref) < 1e-5, f"step {step}"
        losses.append(loss)
        opt.step()
    assert losses[-1] < losses[0] - 0.02, losses
