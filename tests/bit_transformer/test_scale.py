"""scale_up: depth growth is an exact identity (standard, reversible, ACT), width growth keeps the function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bit_transformer import BitTransformerLM, ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.scale import ScaleReport, scale_up


def tiny(**kw) -> ModelConfig:
    base = dict(layers=2, d_model=16, nhead=2, dim_feedforward=32, max_seq_len=54, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def trained_like(cfg: ModelConfig, seed: int = 0) -> BitTransformerLM:
    """A model whose every parameter is off its init (LayerNorm gains/biases, biases, halting spread), and
    whose residual stream has a trained-like scale, so a mapping that drops or misplaces anything shows."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "emb" in name:
                p.copy_(noise * 0.5)
            elif ".halt." in name:  # halting after different layers at different positions
                p.copy_(noise * (3.0 / p.shape[-1] ** 0.5 if p.dim() == 2 else 1.0) - 0.5)
            elif p.dim() == 2:  # O(1) attention scores and branch outputs, as after training
                p.copy_(noise / p.shape[1] ** 0.5)
            elif "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.eval()


def bits(batch: int = 2, length: int = 54, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 2, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model: BitTransformerLM, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).logits


@pytest.mark.parametrize(("reversible", "act"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("init", ["copy", "random"])
def test_depth_growth_is_identity(reversible, act, init):
    cfg = tiny(reversible=reversible, act=act)
    model, x = trained_like(cfg), bits()
    if act:  # the halting really varies by position (else the ACT path would be trivial)
        used = model(x, return_telemetry=True).telemetry.layers_used
        assert used.min() < cfg.layers and used.max() == cfg.layers
    before = logits(model, x)
    new, new_cfg, report = scale_up(model, cfg, layers=5, new_layer_init=init, batch=x)
    assert new_cfg.layers == 5 and len(new.blocks) == 5 and report.new_layers == [2, 3, 4]
    assert (logits(new, x) - before).abs().max() < 1e-5
    assert report.max_logit_change < 1e-5 and abs(report.loss_after - report.loss_before) < 1e-6
    for block in new.blocks[2:]:
        for proj in block.residual_projections:
            assert proj.weight.abs().max() == 0 and proj.bias.abs().max() == 0
    assert report.params_after > report.params_before


def test_width_doubling_is_exact_and_keeps_old_slices():
    cfg = tiny()
    model, x = trained_like(cfg), bits()
    new, new_cfg, report = scale_up(model, cfg, d_model=32, nhead=4, dim_feedforward=64, batch=x)
    assert (new_cfg.d_model, new_cfg.nhead, new_cfg.head_dim, new_cfg.ff_dim) == (32, 4, 8, 64)
    assert report.stream_growth == "repeat"
    assert (logits(new, x) - logits(model, x)).abs().max() < 1e-5
    old_w, new_w = model.blocks[0].mlp.up.weight, new.blocks[0].mlp.up.weight
    assert torch.equal(new_w[:32, :16], old_w)  # old weights sit in the overlapping slice
    assert new_w[:32, 16:].abs().max() == 0  # ... and read nothing from the new dims


@pytest.mark.parametrize("act", [False, True])
def test_head_dim_growth_and_ff_growth_are_exact(act):
    cfg = tiny(act=act, reversible=act)
    model, x = trained_like(cfg), bits()
    new, new_cfg, report = scale_up(model, cfg, d_model=48, dim_feedforward=80, batch=x)  # 2 heads of 24
    assert new_cfg.head_dim == 24 and report.stream_growth == "repeat"
    assert (logits(new, x) - logits(model, x)).abs().max() < 1e-5


@pytest.mark.parametrize("act", [False, True])
def test_non_multiple_width_is_exact_too(act):
    cfg = tiny(act=act, reversible=act)
    model, x = trained_like(cfg), bits()
    new, _, report = scale_up(model, cfg, d_model=24, nhead=3, batch=x)
    assert report.stream_growth == "mean"
    # the stream is rescaled by sqrt(24/16) so that even LayerNorm's eps acts as before
    assert (logits(new, x) - logits(model, x)).abs().max() < 1e-5
    assert abs(report.loss_after - report.loss_before) < 1e-6


def test_longer_positions_keep_old_positions():
    cfg = tiny()
    model, x = trained_like(cfg), bits()
    new, new_cfg, report = scale_up(model, cfg, max_seq_len=108, layers=3)
    assert new_cfg.max_seq_len == 108 and report.new.max_seq_len == 108
    assert (logits(new, x) - logits(model, x)).abs().max() < 1e-5
    assert logits(new, bits(length=108)).shape == (2, 108, 2)


def test_grown_model_trains_and_new_blocks_wake_up():
    cfg = tiny()
    model, x = trained_like(cfg), bits(batch=4)
    new, _, _ = scale_up(model, cfg, layers=3, d_model=32, nhead=4)
    new.train()
    opt = torch.optim.AdamW(new.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = new(x).logits
        loss = F.cross_entropy(out[:, :-1].reshape(-1, 2), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert new.blocks[2].attn.out.weight.abs().max() > 0  # the identity block received gradient
    assert new.blocks[0].mlp.up.weight[:, 16:].abs().max() > 0  # the new stream dims are being read


def test_rejects_shrinking_and_leaves_global_rng_alone():
    cfg = tiny()
    model = trained_like(cfg)
    with pytest.raises(ValueError, match="head_dim would shrink"):
        scale_up(model, cfg, nhead=4)
    with pytest.raises(ValueError, match="layers would shrink"):
        scale_up(model, cfg, layers=1)
    state = torch.get_rng_state()
    scale_up(model, cfg, layers=3, new_layer_init="random", seed=5)
    assert torch.equal(state, torch.get_rng_state())


def test_unknown_parameters_are_an_error_not_silently_dropped():
    cfg = tiny()
    model = trained_like(cfg)
    model.blocks[0].gate = torch.nn.Linear(16, 16)  # a part scale.py does not know
    with pytest.raises(NotImplementedError, match=r"blocks\.0\.gate"):
        scale_up(model, cfg, layers=3)


def test_report_is_json_and_seeded():
    cfg = tiny()
    model = trained_like(cfg)
    a, _, report = scale_up(model, cfg, d_model=24, nhead=3, seed=1)
    b, _, _ = scale_up(model, cfg, d_model=24, nhead=3, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    again = ScaleReport.model_validate_json(report.model_dump_json())
    assert again.old.d_model == 16 and again.new.d_model == 24 and again.exact


def test_qat_model_grows_into_a_qat_model_and_depth_stays_exact():
    from bit_transformer.quantization import QATLinear, prepare_qat, quantize_int8

    cfg = tiny()
    model, x = prepare_qat(trained_like(cfg)), bits()
    new, _, report = scale_up(model, cfg, layers=4, batch=x)
    assert new.qat_prepared and isinstance(new.blocks[3].mlp.up, QATLinear)
    assert report.max_logit_change < 1e-5
    with pytest.raises(ValueError, match="float model"):
        scale_up(quantize_int8(trained_like(cfg)), cfg, layers=3)
