"""Checkpoints and INT8 artifacts written before the block stack (keys ``blocks.N.ff.0``, ``ln_f``) still load.

The fixtures under tests/fixtures/legacy_checkpoints were written by the pre-issue-22 code (a flat model with
ACT and a framed model, weights perturbed so every tensor matters), together with the logits that code
computed; today's code must reproduce them bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

from bit_transformer.block import upgrade_key
from bit_transformer.checkpoint import load_checkpoint
from bit_transformer.factory import build_model
from bit_transformer.quantization import load_int8

FIXTURES = Path(__file__).parent.parent / "fixtures" / "legacy_checkpoints"


@pytest.mark.parametrize("arch", ["flat", "framed"])
def test_old_checkpoint_loads_with_bit_identical_logits(arch):
    old_keys = safetensors.torch.load_file(str(FIXTURES / arch / "model.safetensors"))
    assert any(".ff.0." in k for k in old_keys) and not any(k.startswith("stack.") for k in old_keys)
    expected = safetensors.torch.load_file(str(FIXTURES / f"{arch}-expected.safetensors"))
    loaded = load_checkpoint(FIXTURES / arch)
    assert loaded.model.cfg.arch == arch and loaded.model.cfg.block == "classic"
    with torch.no_grad():
        got = loaded.model.eval()(expected["bits"]).logits
    assert torch.equal(got, expected["logits"])
    # A plain load_state_dict of old keys works too (the model's pre-hook renames them).
    fresh = build_model(loaded.model.cfg).eval()
    fresh.load_state_dict(old_keys, strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(expected["bits"]).logits, expected["logits"])


@pytest.mark.parametrize("arch", ["flat", "framed"])
def test_old_int8_artifact_loads_with_identical_logits(arch):
    expected = safetensors.torch.load_file(str(FIXTURES / f"{arch}-expected.safetensors"))
    model, _ = load_int8(FIXTURES / f"{arch}-int8", backend="reference")
    with torch.no_grad():
        assert torch.equal(model(expected["bits"]).logits, expected["int8_logits"])


def test_upgrade_key_maps_old_names_and_leaves_new_ones():
    assert upgrade_key("blocks.3.ff.0.weight") == "stack.blocks.3.mlp.up.weight"
    assert upgrade_key("blocks.3.ff.2.bias") == "stack.blocks.3.mlp.down.bias"
    assert upgrade_key("blocks.0.ff.2.weight.int8") == "stack.blocks.0.mlp.down.weight.int8"
    assert upgrade_key("blocks.1.ln2.weight") == "stack.blocks.1.norm2.weight"
    assert upgrade_key("blocks.1.attn.qkv") == "stack.blocks.1.attn.qkv"
    assert upgrade_key("blocks.1.halt.proj.bias") == "stack.blocks.1.halt.proj.bias"
    assert upgrade_key("ln_f.bias") == "stack.norm.bias"
    for new in ("stack.blocks.0.mlp.up.weight", "frame_in.0.weight", "pos_emb.weight", "head.bias"):
        assert upgrade_key(new) == new
