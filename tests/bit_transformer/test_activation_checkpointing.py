"""Per-block activation checkpointing, alone and combined with ACT and reversible blocks."""

from __future__ import annotations

import pytest
import torch

from .autograd_helpers import (
    grads,
    make_model,
    max_rel_err,
    random_bits,
    reference_grads,
    saved_activation_bytes,
    spread_halting,
    tiny_cfg,
)

MODES = [
    pytest.param(dict(causal=True), id="causal-full"),
    pytest.param(dict(causal=False, chunk_size=9, overlap=3), id="bidirectional-chunked"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("act", [False, True], ids=["plain", "act"])
def test_checkpointed_grads_equal_plain(mode, act):
    model = make_model(tiny_cfg(checkpointing=True, act=act, **mode))
    if act:
        spread_halting(model)
    bits = random_bits()
    ref = reference_grads(model, bits)  # same model, ordinary autograd
    got = grads(model, bits)
    assert len(got) == sum(1 for _ in model.parameters())
    assert max_rel_err(got, ref) < 1e-6  # dropout replays: torch.utils.checkpoint restores the RNG


def test_checkpointing_stores_less_and_only_when_training():
    bits = random_bits(2, 63)
    plain = saved_activation_bytes(make_model(tiny_cfg(layers=4)), bits)
    ckpt = saved_activation_bytes(make_model(tiny_cfg(layers=4, checkpointing=True)), bits)
    assert ckpt < 0.4 * plain
    model = make_model(tiny_cfg(layers=4, checkpointing=True)).eval()
    with torch.no_grad():
        a = model(bits).logits
    assert torch.allclose(a, model(bits).logits, atol=1e-6)


def test_checkpointing_with_telemetry_runs_uncheckpointed_and_keeps_gradients():
    model = make_model(tiny_cfg(checkpointing=True, act=True))
    bits = random_bits()
    plain = grads(model, bits)
    with_telemetry = grads(model, bits, return_telemetry=True)
    assert max_rel_err(with_telemetry, plain) < 1e-6


@pytest.mark.parametrize("act", [False, True], ids=["plain", "act"])
def test_reversible_wins_over_checkpointing(act):
    bits = random_bits(2, 63)
    rev = make_model(tiny_cfg(layers=4, reversible=True, act=act))
    both = make_model(tiny_cfg(layers=4, reversible=True, act=act, checkpointing=True))
    both.load_state_dict(rev.state_dict())
    # the combination is accepted, runs the reversible backward (same memory) and gets correct gradients
    assert saved_activation_bytes(both, bits) == saved_activation_bytes(rev, bits)
    got = grads(both, bits)
    assert max_rel_err(got, grads(rev, bits)) == 0.0
    assert max_rel_err(got, reference_grads(both, bits)) < 1e-5
