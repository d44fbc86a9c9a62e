"""Distillation (train.teacher): the KL term, a frozen teacher, alpha=0 == plain training, the CLI, resume, errors."""

from __future__ import annotations

import copy
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from bit_transformer.checkpoint import save_checkpoint
from bit_transformer.cli import main
from bit_transformer.config import RunConfig
from bit_transformer.distill import distill_kl, load_teacher, weights_sha256
from bit_transformer.factory import build_model
from bit_transformer.train_loss import micro_batch_loss
from bit_transformer.training import Trainer

from .test_training import SEQ, config, corpus, steps

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory, text) -> str:
    """A briefly trained framed teacher (2 layers x 16) with EMA weights, as a checkpoint directory."""
    cfg = config(ema_decay=0.9)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"layers": 2})})
    res = Trainer(cfg, tmp_path_factory.mktemp("teacher"), corpus=corpus(text, 28)).fit(steps=12)
    assert res.status == "completed", res.reason
    return res.checkpoint


def batch(text: str, rows: int = 4):
    data = corpus(text, 28)
    from bit_transformer.data import BitWindowDataset

    ds = BitWindowDataset(data.train, SEQ)
    items = [ds[i] for i in range(rows)]
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


def run(tmp_path, text, name, *, fit=None, cancel=None, events=None, **train):
    sink = events if events is not None else []
    tr = Trainer(config(**train), tmp_path / name, corpus=corpus(text, 28), cancel=cancel,
                 callback=lambda e, p: sink.append((e, p)))
    return tr, tr.fit(**(fit or {}))


# ------------------------------------------------------------------------------------------------ the loss


def test_kl_matches_its_definition_and_scales_with_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    for temp in (1.0, 2.5):
        p = torch.softmax(t / temp, -1)
        expected = (p * (p.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
        assert torch.allclose(distill_kl(s, t, temp), expected, atol=1e-6)
    assert float(distill_kl(t, t, 2.0)) == 0.0
    assert float(distill_kl(s, t)) > 0.01


def test_kl_is_zero_for_a_copy_of_the_teacher(text, teacher_ckpt):
    cfg = config(teacher=teacher_ckpt, distill_weight=1.0)
    teacher = load_teacher(cfg.train, cfg.model, torch.device("cpu"))
    student = copy.deepcopy(teacher.model).train().requires_grad_(True)
    x, y = batch(text)
    parts = micro_batch_loss(student, x, y, cfg=cfg.train, ponder_weight=0.0, compress=None, precision="fp32",
                             teacher=teacher)
    assert parts.kl == 0.0 and float(parts.loss.detach()) == 0.0  # alpha=1: the loss is the KL alone
    assert parts.raw_ce is not None and parts.raw_ce > 0.1  # the data CE is still reported


def test_the_teacher_uses_its_ema_weights_and_gets_no_gradient(text, teacher_ckpt):
    from bit_transformer.checkpoint import load_checkpoint, load_model

    cfg = config(teacher=teacher_ckpt, distill_weight=1.0, distill_temperature=2.0)
    teacher = load_teacher(cfg.train, cfg.model, torch.device("cpu"))
    ema_model, _ = load_model(teacher_ckpt)
    raw = load_checkpoint(teacher_ckpt).model
    assert weights_sha256(teacher.model) == weights_sha256(ema_model) != weights_sha256(raw)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    torch.manual_seed(1)
    student = build_model(cfg.model).train()
    x, y = batch(text)
    parts = micro_batch_loss(student, x, y, cfg=cfg.train, ponder_weight=0.0, compress=None, precision="fp32",
                             teacher=teacher)
    assert parts.kl > 0 and float(parts.loss.detach()) == pytest.approx(parts.kl, rel=1e-6)
    parts.loss.backward()
    assert all(p.grad is None for p in teacher.model.parameters())
    grads = [p.grad for p in student.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    mixed = micro_batch_loss(student, x, y, cfg=cfg.train.model_copy(update={"distill_weight": 0.3}),
                             ponder_weight=0.0, compress=None, precision="fp32", teacher=teacher)
    assert float(mixed.loss.detach()) == pytest.approx(0.7 * mixed.raw_ce + 0.3 * mixed.kl, rel=1e-6)


def test_alpha_zero_equals_plain_training_bit_for_bit(tmp_path, text, teacher_ckpt):
    plain_events, distil_events = [], []
    plain, res = run(tmp_path, text, "plain", fit={"steps": 6}, events=plain_events)
    distil, res2 = run(tmp_path, text, "distil", fit={"steps": 6}, events=distil_events, teacher=teacher_ckpt,
                       distill_weight=0.0)
    assert res.status == res2.status == "completed"
    assert [s.loss for s in steps(plain_events)] == [s.loss for s in steps(distil_events)]
    assert all(s.distill_kl > 0 for s in steps(distil_events))  # computed and logged, weighted 0
    a, b = plain.model.state_dict(), distil.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert res2.plan.teacher.startswith(Path(teacher_ckpt).parent.parent.name + "/") and "alpha=0" in res2.plan.teacher


def test_training_leaves_the_teacher_untouched(tmp_path, text, teacher_ckpt):
    tr, res = run(tmp_path, text, "s", fit={"steps": 3}, teacher=teacher_ckpt)
    assert res.status == "completed", res.reason
    assert weights_sha256(tr.teacher.model) == tr.teacher.sha256 and not tr.teacher.model.training


def test_a_flat_teacher_teaches_a_framed_student(tmp_path, text):
    _, res = run(tmp_path, text, "flat-teacher", fit={"steps": 4}, arch="flat")
    assert res.status == "completed"
    events: list = []
    tr = Trainer(config(teacher=res.checkpoint, distill_weight=1.0), tmp_path / "framed", corpus=corpus(text, 28),
                 callback=lambda e, p: events.append((e, p)))
    res2 = tr.fit(steps=3)
    assert res2.status == "completed", res2.reason
    assert tr.teacher.model.cfg.arch == "flat" and tr.model.cfg.arch == "framed"
    assert all(s.distill_kl > 0 and s.loss == s.distill_kl for s in steps(events))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_distillation_lowers_the_kl(tmp_path, teacher_ckpt, capsys):
    out = tmp_path / "student"
    flags = ["--data", "builtin", "--data.max_bytes", "4000", "--layers", "1", "--d_model", "16", "--nhead", "2",
             "--max_seq_len", str(SEQ), "--batch_size", "4", "--eval_every", "1000", "--steps", "40", "--quiet",
             "--json", "--out", str(out), "--lr", "3e-3"]
    assert main(["train", *flags, "--teacher", teacher_ckpt, "--distill_weight", "1", "--distill_temperature",
                 "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["plan"]["teacher"].endswith("alpha=1, T=2")
    kls = [r["distill_kl"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
           if r["event"] == "step"]
    assert len(kls) == 40
    assert sum(kls[-5:]) / 5 < 0.5 * sum(kls[:5]) / 5  # the student moved towards the teacher
    meta = json.loads((Path(result["checkpoint"]) / "meta.json").read_text())
    assert meta["config"]["train"]["teacher"] == str(Path(teacher_ckpt).resolve())
    assert meta["state"]["teacher"]["label"] == f"{Path(teacher_ckpt).parent.parent.name}/{Path(teacher_ckpt).name}"
    assert len(meta["state"]["teacher"]["sha256"]) == 64


def test_cli_bad_teacher_names_the_field(tmp_path, capsys):
    code = main(["train", "--data", "builtin", "--data.max_bytes", "2000", "--layers", "1", "--d_model", "16",
                 "--nhead", "2", "--max_seq_len", str(SEQ), "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "s"), "--teacher", str(tmp_path / "missing")])
    assert code == 2
    err = capsys.readouterr().err
    assert "train.teacher" in err and "no checkpoint" in err


# ------------------------------------------------------------------------------------------------ resume


def test_resume_with_a_teacher_is_exact(tmp_path, text, teacher_ckpt):
    kw = {"teacher": teacher_ckpt, "distill_weight": 0.7, "distill_temperature": 1.5, "save_every": 3}
    full_events: list = []
    full, res = run(tmp_path, text, "full", fit={"steps": 8}, events=full_events, **kw)
    assert res.status == "completed", res.reason
    cancel = threading.Event()
    part_events: list = []

    def on_event(e, p):
        part_events.append((e, p))
        if e == "step" and p.update == 4:
            cancel.set()

    tr = Trainer(config(**kw), tmp_path / "part", corpus=corpus(text, 28), cancel=cancel, callback=on_event)
    assert tr.fit(steps=8).status == "cancelled"
    tr2 = Trainer(config(**kw), tmp_path / "part", corpus=corpus(text, 28),
                  callback=lambda e, p: part_events.append((e, p)))
    res2 = tr2.fit(steps=8, resume=True)
    assert res2.status == "completed", res2.reason
    assert [(s.loss, s.distill_kl) for s in steps(part_events)] == [(s.loss, s.distill_kl) for s in steps(full_events)]
    a, b = full.model.state_dict(), tr2.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ errors


def test_bad_teachers_are_refused_naming_the_field(tmp_path, text, teacher_ckpt):
    cpu = torch.device("cpu")
    student = config().model
    with pytest.raises(ValueError, match=r"train\.teacher: no checkpoint at"):
        load_teacher(config(teacher=str(tmp_path / "nope")).train, student, cpu)

    damaged = tmp_path / "damaged"
    shutil.copytree(teacher_ckpt, damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"train\.teacher: .*damaged: model\.safetensors"):
        load_teacher(config(teacher=str(damaged)).train, student, cpu)

    denoiser = RunConfig.model_validate({"model": {"arch": "flat", "causal": False, "layers": 1, "d_model": 16,
                                                   "nhead": 2, "max_seq_len": SEQ},
                                         "train": {"objective": "denoise"}})
    save_checkpoint(tmp_path / "denoiser", model=build_model(denoiser.model), config=denoiser, state={})
    with pytest.raises(ValueError, match=r"train\.teacher is a bidirectional"):
        load_teacher(config(teacher=str(tmp_path / "denoiser")).train, student, cpu)

    longer = student.model_copy(update={"max_seq_len": 4 * SEQ})
    with pytest.raises(ValueError, match=r"train\.teacher reads at most 36 bits .* set model\.max_seq_len <= 36"):
        load_teacher(config(teacher=teacher_ckpt).train, longer, cpu)


def test_config_refuses_a_teacher_it_cannot_use():
    with pytest.raises(ValidationError, match=r"train\.teacher distils next-bit predictions"):
        RunConfig.model_validate({"model": {"arch": "flat", "causal": False},
                                  "train": {"objective": "denoise", "teacher": "t"}})
    with pytest.raises(ValidationError, match=r"train\.teacher reads raw bit windows"):
        RunConfig.model_validate({"model": {"arch": "flat"}, "train": {"compress_prob": 0.5, "teacher": "t"}})
    with pytest.raises(ValidationError, match="distill_weight"):
        RunConfig.model_validate({"train": {"distill_weight": 1.5}})
    # Stored configs from before distillation load unchanged: no teacher.
    assert RunConfig.model_validate({"train": {"lr": 1e-3}}).train.teacher is None


def test_resume_refuses_a_different_teacher(tmp_path, text, teacher_ckpt):
    _, res = run(tmp_path, text, "s", fit={"steps": 2}, teacher=teacher_ckpt)
    assert res.status == "completed"
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_ckpt, other)
    with torch.no_grad():  # same architecture, other weights: rewrite the copy's EMA weights
        from bit_transformer.checkpoint import load_checkpoint

        loaded = load_checkpoint(other)
        model = loaded.model
        for p in model.parameters():
            p.add_(0.01)
        save_checkpoint(other, model=model, config=loaded.config, state=loaded.state)
    tr = Trainer(config(teacher=str(other)), tmp_path / "s", corpus=corpus(text, 28))
    res2 = tr.fit(steps=4, resume=True)
    assert res2.status == "failed"
    assert "train.teacher" in res2.reason and "different weights" in res2.reason
