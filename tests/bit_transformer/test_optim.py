"""Optimizers and weight averaging: the Muon/AdamW split, exact resume with Muon state, the EMA."""

from __future__ import annotations

import threading

import pytest
import torch

from bit_transformer.checkpoint import load_checkpoint, load_model
from bit_transformer.config import ModelConfig, TrainConfig
from bit_transformer.ema import WeightEMA
from bit_transformer.factory import build_model
from bit_transformer.optim import SplitOptimizer, build_optimizer, split_parameters
from bit_transformer.training import Trainer
from tests.bit_transformer.test_training import config, corpus, run, steps

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.mark.parametrize("arch", ["flat", "framed"])
def test_every_parameter_is_in_exactly_one_optimizer(arch):
    model = build_model(ModelConfig(layers=2, d_model=32, nhead=4, max_seq_len=72, arch=arch))
    opt = build_optimizer(model, TrainConfig(optimizer="muon", weight_decay=0.05, betas=(0.8, 0.95)))
    assert isinstance(opt, SplitOptimizer)
    by_id = {id(p): n for n, p in model.named_parameters()}
    muon = [by_id[id(p)] for g in opt.parts["muon"].param_groups for p in g["params"]]
    adamw = [by_id[id(p)] for g in opt.parts["adamw"].param_groups for p in g["params"]]
    assert sorted(muon + adamw) == sorted(by_id.values()) and not set(muon) & set(adamw)
    # Muon: the blocks' attention and MLP matrices, nothing else.
    assert muon and all(n.startswith("stack.blocks.") and model.get_parameter(n).ndim == 2 for n in muon)
    hidden = {n for n in by_id.values() if n.startswith("stack.blocks.") and model.get_parameter(n).ndim == 2}
    assert hidden == set(muon)
    assert "head.weight" in adamw and not any("ln" in n or n.endswith("bias") for n in muon)
    assert opt.parts["muon"].param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    decay, keep = opt.parts["adamw"].param_groups
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0 and decay["betas"] == (0.8, 0.95)
    assert not any("emb" in by_id[id(p)] for p in decay["params"])  # embeddings are not decayed


def test_vectors_shaped_as_matrices_stay_with_adamw():
    model = build_model(ModelConfig(layers=1, d_model=16, nhead=2, max_seq_len=36, act=True))
    roles = split_parameters(model)
    assert roles["stack.blocks.0.halt.proj.weight"] == "decay"  # a 1 x d halting unit: Muon would just normalise it
    assert roles["stack.blocks.0.attn.qkv.weight"] == "muon" and roles["head.weight"] == "decay"


def test_adamw_keeps_the_old_split_and_order():
    model = build_model(ModelConfig(layers=1, d_model=16, nhead=2, max_seq_len=36))
    opt = build_optimizer(model, TrainConfig())
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.99)
    decay = [n for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    by_id = {id(p): n for n, p in model.named_parameters()}
    assert [by_id[id(p)] for p in opt.param_groups[0]["params"]] == decay
    assert set(split_parameters(model).values()) == {"muon", "decay", "no_decay"}


def _model():
    torch.manual_seed(0)
    return build_model(config().model)


def test_muon_resume_is_exact(tmp_path, text):
    kw = {"optimizer": "muon", "save_every": 4, "lr_schedule": "wsd", "ema_decay": 0.9}
    full, res = run(tmp_path, text, name="full", model=_model(), fit={"steps": 8}, **kw)
    assert res.status == "completed", res.reason
    cancel = threading.Event()
    cfg = config(**kw)

    def stop_at_4(event, payload):
        if event == "step" and payload.update == 4:
            cancel.set()

    first = Trainer(cfg, tmp_path / "part", corpus=corpus(text, 28), model=_model(), cancel=cancel, callback=stop_at_4)
    assert first.fit(steps=8).updates_done == 4
    loaded = load_checkpoint(tmp_path / "part" / "checkpoints")
    groups = loaded.optimizer_state["param_groups"]
    assert {g["optimizer"] for g in groups} == {"adamw", "muon"}
    assert any(k == "momentum_buffer" for s in loaded.optimizer_state["state"].values() for k in s)
    second = Trainer(cfg, tmp_path / "part", corpus=corpus(text, 28), model=_model())
    assert second.fit(steps=8, resume=True).status == "completed"
    a, b = full.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = full.ema.shadow, second.ema.shadow
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_muon_trains(tmp_path, text):
    events: list = []
    _, res = run(tmp_path, text, events=events, model=_model(), optimizer="muon", lr=1e-2, fit={"steps": 30})
    losses = [s.loss for s in steps(events)]
    assert res.status == "completed" and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_ema_math():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = WeightEMA(lin, decay=0.5)
    assert ema.rate() == pytest.approx(1 / 10)  # warm-up: min(0.5, (1 + 0) / (10 + 0))
    values, expected = [3.0, 5.0, 7.0, 9.0], 1.0
    for n, v in enumerate(values):
        with torch.no_grad():
            lin.weight.fill_(v)
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * v
        ema.update(lin)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(expected)
    with ema.swapped(lin):
        assert lin.weight[0, 0].item() == pytest.approx(expected)
    assert lin.weight[0, 0].item() == 9.0  # the training weights are back


def test_ema_weights_are_evaluated_and_exported(tmp_path, text):
    tr, res = run(tmp_path, text, model=_model(), ema_decay=0.5, eval_every=3, fit={"steps": 6})
    assert res.status == "completed"
    raw = load_checkpoint(tmp_path / "run").model.state_dict()
    averaged, _ = load_model(tmp_path / "run")
    live = tr.model.state_dict()
    assert all(torch.equal(raw[k], live[k].cpu()) for k in raw)  # resume continues from the training weights
    shadow = tr.ema.shadow
    assert all(torch.equal(averaged.state_dict()[k], shadow[k].cpu()) for k in shadow)  # evaluate/export: EMA
    assert any(not torch.equal(raw[k], shadow[k]) for k in raw)
    with tr.ema.swapped(tr.model):  # the run's evaluation scored the averaged weights
        ev = tr.validator.run(tr.model, 6, "fp32", sharded=False)
    assert ev.val_loss == pytest.approx(res.last_eval.val_loss)
