"""model.block='modern': RMSNorm, rotary q/k with QK-norm, ReLU^2/SwiGLU MLP, no biases, zero-initialised writers.

Each part is checked for being there (a test fails if it silently goes missing), for its gradients (finite
differences in float64), and for working with everything else: flat and framed, chunks, the KV cache,
reversible/ACT/checkpointing, bf16 autocast, scale-up and INT8.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bit_transformer.bits import text_to_bits
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.framed import FramedBitTransformerLM
from bit_transformer.generate import generate
from bit_transformer.kv_cache import kv_cache

from .autograd_helpers import loss_of, spread_halting

ARCHS = ["flat", "framed"]


def modern(arch: str = "flat", seed: int = 0, perturb: float = 0.05, **kw):
    """A tiny modern model; ``perturb`` adds noise to every weight so that each block does something (at init
    the zeroed writers make every block the identity, which would hide a missing part)."""
    torch.manual_seed(seed)
    base = dict(arch=arch, block="modern", layers=2, d_model=32, nhead=4, max_seq_len=72, dropout=0.0)
    model = build_model(ModelConfig(**{**base, **kw}))
    if perturb:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g))
    return model


def text_bits(n_bits: int, batch: int = 2) -> torch.Tensor:
    bits = torch.from_numpy(text_to_bits("The quick brown fox jumps over the lazy dog. " * 8).astype("int64"))
    return torch.stack([bits[i * 27 : i * 27 + n_bits] for i in range(batch)])


@pytest.mark.parametrize("arch", ARCHS)
def test_modern_parts_are_there_and_biases_are_not(arch):
    model = modern(arch, perturb=0.0, act=True)
    names = [n for n, _ in model.named_parameters()]
    assert [n for n in names if n.endswith(".bias") and ".halt." not in n] == []  # ACT's halting bias stays
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    block = model.blocks[0]
    assert isinstance(block.norm1, nn.RMSNorm) and isinstance(model.stack.norm, nn.RMSNorm)
    assert isinstance(block.attn.q_norm, nn.RMSNorm) and block.attn.q_norm.weight.shape == (8,)
    assert block.attn.rotary and block.mlp.kind == "relu2" and block.mlp.gate is None
    assert model.pos_emb is None  # positions come from rotary q/k
    if arch == "flat":
        assert model.phase_emb.weight.shape == (9, 32)  # the bit-phase signal is kept
    # Zero-initialised residual writers: every block starts as the identity.
    for b in model.blocks:
        assert b.attn.out.weight.abs().max() == 0 and b.mlp.down.weight.abs().max() == 0
    classic = build_model(ModelConfig(arch=arch, layers=2, d_model=32, nhead=4, max_seq_len=72))
    assert classic.blocks[0].attn.out.weight.abs().max() > 0 and classic.blocks[0].mlp.down.bias is not None


def test_modern_init_is_the_identity_stack():
    model = modern(perturb=0.0).eval()
    x = text_bits(45)
    with torch.no_grad():
        expected = model.head(model.stack.norm(model.embed(x)))
        torch.testing.assert_close(model(x).logits, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_modern_parameter_gets_a_gradient(arch):
    model = modern(arch, act=True, mlp="swiglu").train()
    spread_halting(model, std=5.0)
    x = text_bits(63)
    loss_of(model, x).backward()
    for name, p in model.named_parameters():
        if name.startswith(f"stack.blocks.{model.cfg.layers - 1}.halt."):
            continue  # the last layer's halting unit never decides anything (ACT halts there anyway)
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("mlp", ["relu2", "swiglu", "gelu"])
def test_modern_gradients_match_finite_differences(mlp):
    """Autograd against central differences (float64) on a few entries of every kind of part."""
    model = modern("flat", mlp=mlp, layers=1, d_model=16, nhead=2, max_seq_len=27).double().eval()
    x = text_bits(27, batch=1)

    def loss() -> torch.Tensor:
        out = model(x).logits
        return F.cross_entropy(out[:, :-1].reshape(-1, 2), x[:, 1:].reshape(-1))

    model.zero_grad()
    loss().backward()
    parts = ["attn.qkv.weight", "attn.q_norm.weight", "attn.k_norm.weight", "attn.out.weight", "norm1.weight",
             "norm2.weight", "mlp.up.weight", "mlp.down.weight"] + (["mlp.gate.weight"] if mlp == "swiglu" else [])
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    eps = 1e-6
    for part in parts:
        p = params[f"stack.blocks.0.{part}"]
        for _ in range(3):
            i = int(torch.randint(p.numel(), (), generator=g))
            flat = p.data.view(-1)
            old = float(flat[i])
            with torch.no_grad():
                flat[i] = old + eps
                up = float(loss())
                flat[i] = old - eps
                down = float(loss())
                flat[i] = old
            numeric = (up - down) / (2 * eps)
            assert float(p.grad.view(-1)[i]) == pytest.approx(numeric, rel=1e-4, abs=1e-8), (part, i)


@pytest.mark.parametrize("arch", ARCHS)
def test_qk_norm_and_rotary_change_the_logits(arch):
    model = modern(arch).eval()
    x = text_bits(72)
    with torch.no_grad():
        ref = model(x).logits
        no_qk = copy.deepcopy(model)
        for b in no_qk.blocks:
            b.attn.q_norm, b.attn.k_norm = None, None
        no_rope = copy.deepcopy(model)
        for b in no_rope.blocks:
            b.attn.rotary = False
        assert (no_qk(x).logits - ref).abs().max() > 1e-3
        assert (no_rope(x).logits - ref).abs().max() > 1e-3


def test_rotary_scores_depend_only_on_relative_position():
    from bit_transformer.attention import rotary

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    s1 = (rotary(q, 10) * rotary(k, 3)).sum()
    s2 = (rotary(q, 40) * rotary(k, 33)).sum()
    s3 = (rotary(q, 40) * rotary(k, 34)).sum()
    assert float(s1) == pytest.approx(float(s2), abs=1e-5) and abs(float(s1) - float(s3)) > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kw", [{}, {"chunk_size": 36, "overlap": 9, "act": True}, {"reversible": True}])
def test_modern_kv_cache_equals_the_uncached_forward(arch, kw):
    model = modern(arch, **kw).eval()
    if kw.get("act"):
        spread_halting(model, std=5.0)
    x = text_bits(72, batch=1)
    with torch.no_grad():
        full = model(x).logits
        with kv_cache(model):
            if arch == "flat":  # prefill 20 bits, then one bit per step
                steps = [model(x[:, :20]).logits] + [model(x[:, t : t + 1]).logits for t in range(20, 72)]
                cached = torch.cat(steps, dim=1)
            else:  # byte logits: prefill [start, 3 frames], then one frame per step
                z = [model.trunk(x[:, :27].reshape(1, 3, 9), start=True)[0]]
                z += [model.trunk(x[:, 9 * f : 9 * f + 9].reshape(1, 1, 9), start=False)[0] for f in range(3, 8)]
                cached = torch.cat(z, dim=1)
        if arch == "framed":
            full = model.trunk(x.reshape(1, 8, 9), start=True)[0]
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_modern_cached_and_uncached_generation_give_the_same_text(arch):
    model = modern(arch, perturb=0.2, chunk_size=36, overlap=9)
    a = generate(model, "Hello", max_bytes=24, seed=11, cache=True)
    b = generate(model, "Hello", max_bytes=24, seed=11, cache=False)
    assert a.text == b.text and a.new_bytes == 24 and a.parity_ok
    assert generate(model, "Hello", max_bytes=24, seed=12, cache=True).text != a.text


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kw", [{"reversible": True, "act": True, "checkpointing": True},
                                {"act": True, "checkpointing": True}, {"reversible": True, "chunk_size": 36}])
def test_modern_memory_options_match_plain_autograd(arch, kw):
    model = modern(arch, layers=3, dropout=0.1, **kw).double().train()
    if kw.get("act"):
        spread_halting(model, std=5.0)
    x = text_bits(72, batch=3)

    def grads(efficient: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.efficient_backward = efficient
        torch.manual_seed(1)  # the same dropout masks
        loss_of(model, x).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast, ref = grads(True), grads(False)
    assert set(fast) == set(ref) and "stack.blocks.0.attn.q_norm.weight" in ref
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("arch", ARCHS)
def test_modern_trains_under_bf16_autocast(arch):
    model = modern(arch, perturb=0.0).train()
    x = text_bits(72, batch=4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.05, losses


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("grow", [{"layers": 4}, {"d_model": 48, "nhead": 6, "dim_feedforward": 256},
                                  {"d_model": 64, "nhead": 8, "layers": 3, "max_seq_len": 144}])
def test_modern_scale_up_is_function_preserving(arch, grow):
    from bit_transformer.scale import scale_up

    model = modern(arch, act=True, mlp="swiglu" if "dim_feedforward" in grow else "auto").eval()
    spread_halting(model, std=5.0)
    new, cfg, report = scale_up(model, **grow)
    assert cfg.block == "modern" and (type(new) is FramedBitTransformerLM) == (arch == "framed")
    assert report.stream_growth == ("zero" if "d_model" in grow else "none")
    x = text_bits(72)
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x).logits, model(x).logits, rtol=0, atol=1e-5)
    assert report.max_logit_change < 1e-5


def test_modern_scale_up_refuses_to_change_head_dim():
    from bit_transformer.scale import scale_up

    with pytest.raises(ValueError, match="keeps head_dim"):
        scale_up(modern(), d_model=64)  # nhead 4 -> head_dim 16


@pytest.mark.parametrize("arch", ARCHS)
def test_modern_int8_export_gives_close_bits_per_byte(arch, tmp_path):
    from bit_transformer.quantization import export_int8, load_int8, prepare_qat

    model = modern(arch, perturb=0.0, mlp="swiglu").train()
    x = text_bits(72, batch=8)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):  # a little training: an init model would be the identity, trivially quantized
        loss = loss_of(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    info = export_int8(model, tmp_path / "m")
    assert info.quantized_linears == 2 * 5  # qkv, out, up, gate, down of both blocks
    q, _ = load_int8(tmp_path / "m")
    with torch.no_grad():
        bpb = float(loss_of(model, x)) * 9 / math.log(2)
        q_bpb = float(loss_of(q, x)) * 9 / math.log(2)
    assert abs(q_bpb - bpb) < 0.05 * bpb and q_bpb != bpb, (bpb, q_bpb)
    qat = prepare_qat(modern(arch).train())
    loss_of(qat, x).backward()
    assert qat.blocks[0].mlp.up.weight.grad is not None and qat.blocks[0].attn.q_norm.weight.grad is not None


def test_modern_needs_an_even_head_dim():
    with pytest.raises(ValueError, match=r"head_dim .* must be even"):
        ModelConfig(block="modern", d_model=24, nhead=8)


def test_memory_estimate_counts_frames_and_the_mlp_width():
    from bit_transformer.config import RunConfig
    from bit_transformer.memory_limits import estimate

    def activations(**model) -> int:
        cfg = RunConfig.model_validate({"model": {"layers": 4, "d_model": 128, "nhead": 8, "max_seq_len": 576,
                                                  **model}, "train": {"batch_size": 32, "amp": "none"}})
        return estimate(cfg, 0).activations

    flat, framed = activations(arch="flat"), activations(arch="framed")
    # 65 trunk positions for 576 bits (1/8.9) and attention over 65 keys, not 576: below 1/9, not ~1
    assert 1 / 50 < framed / flat < 1 / 9
    # MLP width (default 4 * 128 = 512): each extra hidden unit keeps 4 more fp32 values per position and block
    layers, tokens, fp32 = 4, 32 * 576, 4
    assert activations(dim_feedforward=1024) - activations() == layers * tokens * fp32 * 4 * 512
    assert activations(mlp="swiglu") > activations(mlp="relu2")
