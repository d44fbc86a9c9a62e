"""Training loop: horizon, accumulation, AMP, ramp, gate, plateau, cancel, exact resume, compile, QAT hook."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from bit_transformer.bits import text_to_bits
from bit_transformer.config import RunConfig
from bit_transformer.data import BitWindowDataset, Corpus
from bit_transformer.parallel import dist_env
from bit_transformer.sampler import EpochBatchSampler
from bit_transformer.schedule import OneCycle
from bit_transformer.selective_compile import compile_blocks
from bit_transformer.training import Trainer, plan_training

SEQ = 36  # bits per window = 4 bytes
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def corpus(text: str, train_windows: int, val_windows: int = 4) -> Corpus:
    """Exactly ``train_windows`` windows of SEQ bits (4 bytes each, +1 byte for the last target)."""
    tb, vb = text_to_bits(text[: 4 * train_windows + 1]), text_to_bits(text[-(4 * val_windows + 1):])
    return Corpus(train=tb, val=vb, source_id="test", content_hash="0", n_bytes=(len(tb) + len(vb)) // 9,
                  cache_hit=False, cache_path=Path("."))


def config(**train) -> RunConfig:
    t = {"batch_size": 4, "amp": "none", "lr": 3e-3, "eval_every": 1000, "save_every": 1000, "device": "cpu"}
    t.update(train)
    return RunConfig.model_validate(
        {"model": {"layers": 1, "d_model": 16, "nhead": 2, "max_seq_len": SEQ, "dropout": 0.0}, "train": t}
    )


def run(tmp_path, text, *, windows=28, events=None, cancel=None, model=None, name="run", fit=None, **train):
    cfg = config(**train)
    sink = events if events is not None else []
    tr = Trainer(cfg, tmp_path / name, corpus=corpus(text, windows), model=model,
                 callback=lambda e, p: sink.append((e, p)), cancel=cancel)
    return tr, tr.fit(**(fit or {}))


def steps(events):
    return [p for e, p in events if e == "step"]


# ------------------------------------------------------------------------------------------------ plan


@pytest.mark.parametrize("windows,batch,accum,extra,world", [(28, 4, 1, 0, 1), (28, 4, 2, 0, 1), (28, 4, 3, 0, 1),
                                                             (30, 4, 3, 2, 1), (30, 4, 2, 0, 2)])
def test_plan_matches_the_loader(text, windows, batch, accum, extra, world):
    cfg = config(batch_size=batch, accum_steps=accum, extra_steps=extra, epochs=3)
    plan = plan_training(cfg, windows, world_size=world)
    loader = DataLoader(BitWindowDataset(corpus(text, windows).train, SEQ), batch_size=batch)
    micro = math.ceil(math.ceil(windows / world) / batch)
    if world == 1:
        assert plan.micro_batches_per_epoch == len(loader)
    assert plan.micro_batches_per_epoch == micro
    assert plan.updates_per_epoch == math.ceil(micro / accum) + extra
    assert plan.total_updates == plan.scheduler_horizon == 3 * plan.updates_per_epoch
    sampler = EpochBatchSampler(windows, batch, accum_steps=accum, extra_steps=extra, world_size=world)
    assert sampler.groups == plan.updates_per_epoch
    assert len(list(sampler)) == len(sampler)
    sizes: dict[int, int] = {}
    for m in range(len(sampler)):
        g, size = sampler.group_of(m)
        sizes[g] = size
        assert sum(1 for k in range(len(sampler)) if sampler.group_of(k)[0] == g) == size
    assert len(sizes) == plan.updates_per_epoch
    assert plan_training(cfg, windows, steps=5).total_updates == 5


# ------------------------------------------------------------------------------------------------ horizon


@pytest.mark.parametrize("accum", [1, 2, 3])
def test_onecycle_ends_on_its_final_lr_at_the_last_update(tmp_path, text, accum):
    # 7 micro-batches per epoch: not divisible by 2 or 3, so the last group of each epoch is partial.
    events: list = []
    tr, res = run(tmp_path, text, windows=28, events=events, accum_steps=accum, fit={"epochs": 2})
    assert res.status == "completed", res.reason
    expected = 2 * math.ceil(7 / accum)
    assert res.plan.total_updates == res.updates_done == expected
    lrs = [s.lr for s in steps(events)]
    ref = OneCycle(3e-3, expected, 0.1)
    assert len(lrs) == expected
    assert lrs == pytest.approx([ref.lr(i) for i in range(expected)], rel=1e-12)
    assert lrs[-1] == pytest.approx(ref.min_lr) and lrs[-1] < lrs[0]
    assert tr.schedule.last_update == expected - 1  # never stepped past its horizon
    assert steps(events)[-1].micro_step == 14  # every micro-batch of both epochs was trained on
    with pytest.raises(IndexError):
        tr.schedule.lr(expected)


def test_partial_group_loss_is_not_scaled_down(tmp_path, text):
    events: list = []
    _, res = run(tmp_path, text, windows=12, events=events, accum_steps=2, fit={"epochs": 1})  # 3 micro: 2 + 1
    assert res.status == "completed", res.reason
    s = steps(events)
    assert [x.micro_step for x in s] == [2, 3]
    assert s[-1].loss == pytest.approx(s[-1].raw_loss) and 0.3 < s[-1].loss < 1.0  # a real CE, not CE / 2


# ------------------------------------------------------------------------------------------------ accumulation


def test_accumulated_half_batches_equal_one_full_batch(tmp_path, text):
    # Same windows in the same order: one batch of 8 vs two accumulated batches of 4 (dropout 0, fp32).
    torch.manual_seed(0)
    from bit_transformer.factory import build_model

    base = build_model(config().model)
    state = {k: v.clone() for k, v in base.state_dict().items()}
    grads = {}
    for batch, accum in ((8, 1), (4, 2)):
        m = build_model(config().model)
        m.load_state_dict(state)
        tr, res = run(tmp_path, text, windows=8, model=m, name=f"b{batch}", batch_size=batch, accum_steps=accum,
                      lr_schedule="constant", warmup_frac=0.0, fit={"steps": 1})
        assert res.status == "completed", res.reason
        grads[batch] = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert any(not torch.equal(grads[8][k], state[k]) for k in state)
    for k in state:
        torch.testing.assert_close(grads[8][k], grads[4][k], atol=2e-6, rtol=1e-5)


def test_accumulated_gradients_equal_full_batch_gradients(text):
    from bit_transformer.factory import build_model
    from bit_transformer.train_loss import micro_batch_loss

    torch.manual_seed(1)
    m = build_model(config().model)
    x = torch.from_numpy(text_to_bits(text[:8 * 4]).astype(np.int64)).view(8, SEQ)
    y = torch.roll(x, -1, 1)
    cfg = config().train
    micro_batch_loss(m, x, y, cfg=cfg, ponder_weight=0.0, compress=None, precision="fp32").loss.backward()
    full = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        (micro_batch_loss(m, x[half], y[half], cfg=cfg, ponder_weight=0.0, compress=None,
                          precision="fp32").loss / 2).backward()
    for a, p in zip(full, m.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ precision / clip


def test_bf16_autocast_runs_and_is_reported(tmp_path, text, monkeypatch):
    dtypes = []
    clips = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip(params, max_norm, *a, **k):
        clips.append(max_norm)
        return real_clip(params, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    from bit_transformer.factory import build_model

    torch.manual_seed(0)
    m = build_model(config().model)
    m.head.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    events: list = []
    _, res = run(tmp_path, text, model=m, events=events, amp="bf16", grad_clip=0.5, fit={"steps": 2})
    assert res.status == "completed", res.reason
    assert res.plan.precision == "bf16" and all(s.precision == "bf16" for s in steps(events))
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert clips == [0.5, 0.5]
    _, res32 = run(tmp_path, text, name="fp32", amp="none", fit={"steps": 1})
    assert res32.plan.precision == "fp32"


# ------------------------------------------------------------------------------------------------ ramp


def test_compression_ramp_follows_the_cosine_and_tracks_losses_separately(tmp_path, text):
    from bit_transformer import schedule
    events: list = []
    _, res = run(tmp_path, text, windows=40, events=events, compress_prob=0.8, warmup_frac=0.5, fit={"steps": 10})
    assert res.status == "completed", res.reason
    s = steps(events)
    warm = 5
    for k, m in enumerate(s):
        assert m.compress_prob == pytest.approx(schedule.cosine_ramp(k, 0.0, 0.8, warm))
    assert s[0].compress_prob == 0.0 and s[0].compressed_loss is None
    assert s[-1].compress_prob == pytest.approx(0.8)
    comp = [m for m in s if m.compressed_loss is not None]
    assert comp, "no compressed samples at p=0.8"
    assert any(m.raw_loss is not None and abs(m.raw_loss - m.compressed_loss) > 1e-4 for m in comp)


# ------------------------------------------------------------------------------------------------ gate


def test_safety_gate_stops_and_keeps_the_last_good_checkpoint(tmp_path, text):
    events: list = []
    safety = {"burn_in": 2, "loss_threshold": 0.01}  # any real loss is above this: triggers right after burn-in
    tr, res = run(tmp_path, text, events=events, eval_every=1, save_every=1, safety=safety, fit={"steps": 20})
    assert res.status == "gated" and "safety gate" in res.reason
    evals = [p for e, p in events if e == "eval"]
    assert [ev.gate.triggered for ev in evals] == [False, False, True]
    assert res.updates_done == 3
    ckpt = Path(res.checkpoint)
    assert ckpt.name == "update-0000002"
    assert (ckpt.parent / "latest").read_text().strip() == "update-0000002"
    assert not (ckpt.parent / "update-0000003").exists()  # the gated state was never saved
    from bit_transformer.checkpoint import load_model

    saved, _ = load_model(ckpt)
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(),
                                                       tr.model.state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------------ plateau


def test_progressive_plateau_drops_lr_and_asks_for_scale_up(tmp_path, text):
    events: list = []
    _, res = run(tmp_path, text, events=events, lr_schedule="progressive_plateau", patience=1, min_delta=100.0,
                 plateau_scale_up=True, eval_every=2, warmup_frac=0.0, fit={"steps": 8})
    assert res.status == "completed", res.reason
    plateaus = [p for e, p in events if e == "plateau"]
    assert len(plateaus) == 3 and all(p.scale_up_requested for p in plateaus)  # evals 2..4 never improve by 100
    lrs = [s.lr for s in steps(events)]
    assert lrs[:2] == [3e-3, 3e-3]
    assert plateaus[0].lr_after == pytest.approx(3e-3 / math.sqrt(2))
    assert max(lrs[4:6]) == pytest.approx(3e-3 / math.sqrt(2)) and lrs[4] < lrs[3]  # re-warm after the drop


def test_plateau_grows_the_model_in_place_and_resume_keeps_the_growth(tmp_path, text):
    events: list = []
    tr, res = run(tmp_path, text, events=events, lr_schedule="progressive_plateau", patience=1, min_delta=100.0,
                  plateau_scale_up=True, plateau_grow_layers=1, eval_every=2, warmup_frac=0.0, fit={"steps": 8})
    assert res.status == "completed", res.reason
    grown = [p for e, p in events if e == "scale_up"]
    assert [g.layers for g in grown] == [2, 3, 4]  # one layer per plateau (evals 2, 3, 4), starting from 1
    assert all(g.max_logit_change < 1e-5 for g in grown)  # new blocks start as identities
    assert grown[-1].params_after > grown[0].params_before
    assert len(tr.model.blocks) == 4 and tr.cfg.model.layers == 4
    assert all(math.isfinite(s.loss) for s in steps(events))
    # The grown architecture is what the checkpoint holds, so resuming continues the deep model.
    tr2, res2 = run(tmp_path, text, lr_schedule="progressive_plateau", patience=1, min_delta=100.0,
                    plateau_scale_up=True, eval_every=2, warmup_frac=0.0, fit={"steps": 10, "resume": True})
    assert res2.status == "completed", res2.reason
    assert len(tr2.model.blocks) == 4 and res2.updates_done == 10


# ------------------------------------------------------------------------------------------------ cancel / resume


def _weights(tr):
    return {k: v.clone() for k, v in tr.model.state_dict().items()}


@pytest.mark.parametrize("mid_group", [False, True])
def test_resume_is_exact(tmp_path, text, mid_group):
    # 7 micro-batches / epoch, accum 2 -> 4 updates / epoch; 10 updates cross two epoch boundaries.
    kw = {"windows": 28, "accum_steps": 2, "save_every": 3, "eval_every": 2}
    dropout_cfg = config().model.model_copy(update={"dropout": 0.1})
    from bit_transformer.factory import build_model

    def model():
        torch.manual_seed(0)
        return build_model(dropout_cfg)

    full_events: list = []
    full, res = run(tmp_path, text, name="full", model=model(), events=full_events, fit={"steps": 10}, **kw)
    assert res.status == "completed", res.reason

    cancel = threading.Event()
    part_events: list = []
    m = model()
    if mid_group:  # cancel after the first micro-batch of update 6: that partial group is discarded
        calls = {"n": 0}

        def hook(mod, _args):
            calls["n"] += mod.training  # count training forwards only (evals also call the model)
            if calls["n"] == 10:  # updates 1-5 used 2+2+2+1+2 micro-batches
                cancel.set()

        m.register_forward_pre_hook(hook)
    else:
        def on_event(e, p):
            part_events.append((e, p))
            if e == "step" and p.update == 5:
                cancel.set()

    sink = part_events if mid_group else None
    cfg = config(**{k: v for k, v in kw.items() if k != "windows"})
    tr = Trainer(cfg, tmp_path / "part", corpus=corpus(text, 28), model=m, cancel=cancel,
                 callback=(lambda e, p: sink.append((e, p))) if mid_group else on_event)
    res1 = tr.fit(steps=10)
    assert res1.status == "cancelled" and res1.updates_done == 5
    assert Path(res1.checkpoint).name == "update-0000005"
    tr2 = Trainer(cfg, tmp_path / "part", corpus=corpus(text, 28), model=model(),
                  callback=lambda e, p: part_events.append((e, p)))
    res2 = tr2.fit(steps=10, resume=True)
    assert res2.status == "completed", res2.reason
    assert [s.loss for s in steps(part_events)] == [s.loss for s in steps(full_events)]
    assert [s.lr for s in steps(part_events)] == [s.lr for s in steps(full_events)]
    a, b = _weights(full), _weights(tr2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows if r["event"] == "step"] == list(range(1, 11))
    assert {r["event"] for r in rows} >= {"plan", "step", "eval", "checkpoint", "done"}


def test_resume_without_checkpoint_starts_fresh(tmp_path, text):
    _, res = run(tmp_path, text, fit={"steps": 2, "resume": True})
    assert res.status == "completed" and res.updates_done == 2


# ------------------------------------------------------------------------------------------------ compile / dist / qat


def test_compile_skips_with_a_reason(tmp_path, text, monkeypatch):
    import bit_transformer.selective_compile as rt

    monkeypatch.setattr(rt, "compile_support", lambda: (False, "torch 2.0 has no usable torch.compile"))
    _, res = run(tmp_path, text, compile=True, fit={"steps": 1})
    assert res.status == "completed"
    assert res.plan.compile_requested and not res.plan.compile_ran
    assert "skipped" in res.plan.compile_reason and "2.0" in res.plan.compile_reason

    from bit_transformer.factory import build_model

    m = build_model(config().model)

    def boom():
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(rt, "compile_support", lambda: (True, "ok"))
    ran, why = compile_blocks(m, True, boom)
    assert not ran and "inductor exploded" in why
    assert all(b.attn._compiled_call_impl is None and b.mlp._compiled_call_impl is None for b in m.blocks)
    assert compile_blocks(m, False) == (False, "not requested (compile=false)")


@pytest.mark.slow
def test_compile_runs_for_real(tmp_path, text):
    _, res = run(tmp_path, text, compile=True, fit={"steps": 2})
    assert res.status == "completed", res.reason
    assert res.plan.compile_ran, res.plan.compile_reason


def test_torchrun_environment_is_read(monkeypatch):
    assert dist_env().world_size == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = dist_env()
    assert (info.rank, info.world_size, info.local_rank, info.is_main) == (2, 4, 0, False)
    a = EpochBatchSampler(30, 4, world_size=2, rank=0)
    b = EpochBatchSampler(30, 4, world_size=2, rank=1)
    ia, ib = [i for bt in a for i in bt], [i for bt in b for i in bt]
    assert not set(ia) & set(ib) and len(set(ia) | set(ib)) == 30  # ranks split the epoch


def test_qat_hook_is_called_once(tmp_path, text, monkeypatch):
    import bit_transformer.quantization as quantization

    calls = []  # apply_qat (quantization.py) looks prepare_qat up in its module at call time
    monkeypatch.setattr(quantization, "prepare_qat", lambda model: calls.append(model) or model)
    tr, res = run(tmp_path, text, quantization="int8", qat=True, fit={"steps": 1})
    assert res.status == "completed", res.reason
    assert len(calls) == 1 and calls[0] is tr.model and tr.model.qat_prepared


def test_loss_adds_ponder_and_telemetry_terms(text):
    from bit_transformer.factory import build_model
    from bit_transformer.telemetry import telemetry_loss
    from bit_transformer.train_loss import micro_batch_loss

    torch.manual_seed(0)
    m = build_model(config().model.model_copy(update={"act": True, "layers": 2}))
    x = torch.from_numpy(text_to_bits(text[: 4 * 4]).astype(np.int64)).view(4, SEQ)
    y = torch.roll(x, -1, 1)
    base = config().train
    plain = micro_batch_loss(m, x, y, cfg=base, ponder_weight=0.0, compress=None, precision="fp32")
    assert plain.ponder > 1.0  # ACT ran: mean N + R over positions
    pondered = micro_batch_loss(m, x, y, cfg=base, ponder_weight=0.5, compress=None, precision="fp32")
    assert float(pondered.loss.detach()) == pytest.approx(plain.raw_ce + 0.5 * plain.ponder, rel=1e-5)
    lam = base.model_copy(update={"lambda_S": 1.0, "lambda_K": 2.0})
    reg = micro_batch_loss(m, x, y, cfg=lam, ponder_weight=0.0, compress=None, precision="fp32")
    extra = float(telemetry_loss(m(x).logits, y, 2.0, 0.0, 1.0, aligned=True).detach())
    assert extra > 0 and float(reg.loss.detach()) == pytest.approx(plain.raw_ce + extra, rel=1e-5)


def test_qat_run_checkpoints_and_resumes_with_the_real_module(tmp_path, text):
    from bit_transformer.checkpoint import load_model

    tr, res = run(tmp_path, text, quantization="int8", qat=True, fit={"steps": 2})
    assert res.status == "completed", res.reason
    m, _ = load_model(res.checkpoint)
    assert m.qat_prepared and type(m.blocks[0].mlp.up) is type(tr.model.blocks[0].mlp.up)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), tr.model.state_dict().values(), strict=True))
    res2 = Trainer(config(quantization="int8", qat=True), tmp_path / "run", corpus=corpus(text, 28)).fit(
        steps=3, resume=True)
    assert res2.status == "completed" and res2.updates_done == 3 and res2.plan.start_update == 2
