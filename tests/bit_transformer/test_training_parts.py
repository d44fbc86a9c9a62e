"""The trainer's parts on their own: the train state, the checkpointer's rules, and the TensorBoard sink."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from bit_transformer.bits import text_to_bits
from bit_transformer.checkpoint import list_checkpoints
from bit_transformer.checkpointer import Checkpointer
from bit_transformer.config import RunConfig, TrainConfig
from bit_transformer.data import Corpus, builtin_text
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM
from bit_transformer.parallel import DistInfo, Parallel
from bit_transformer.records import EvalMetrics, GateDecision
from bit_transformer.train_state import TrainState
from bit_transformer.training import Trainer


def test_train_state_advances_per_update_and_round_trips():
    s = TrainState()
    s.advance(epoch=0, position=0, micro_batches=3)
    s.advance(epoch=0, position=3, micro_batches=2)  # the epoch's short last group
    assert (s.update, s.epoch, s.position, s.micro_step) == (2, 0, 5, 5)
    saved = {**s.state_dict(), "gate": {"ema": {}}, "rng": {}, "best_val_loss": 0.5}  # a checkpoint carries more
    back = TrainState()
    back.load_state_dict(saved)
    assert back == s.model_copy(update={"best_val_loss": 0.5})
    old = TrainState()
    old.load_state_dict({"update": 4, "epoch": 1, "position": 2})  # an older checkpoint without micro_step
    assert (old.update, old.micro_step, old.best_val_loss) == (4, 0, None)


def _save_args(model: BitTransformerLM) -> dict:
    cfg = RunConfig.model_validate({"model": model.cfg.model_dump()})
    opt = torch.optim.AdamW(model.parameters())
    return {"parallel": Parallel(model, "ddp", DistInfo(), torch.device("cpu")), "optimizer": opt, "config": cfg,
            "schedule": None, "state": {"update": 0}, "tensors": {}}


def test_checkpointer_cadence_skips_repeats_refuses_diverged_states_and_prunes(tmp_path):
    model = build_model(RunConfig().model.model_copy(update={"layers": 1, "d_model": 16, "nhead": 2}))
    ck = Checkpointer(tmp_path / "checkpoints", TrainConfig(save_every=4, keep_checkpoints=2), is_main=True)
    assert [u for u in range(1, 13) if ck.due(u, final=False)] == [4, 8, 12]
    assert ck.due(7, final=True)
    assert ck.resume_point(torch.device("cpu")) is None  # nothing saved yet: a resume starts fresh
    args = _save_args(model)
    for update in (4, 8, 12):
        assert ck.save("periodic", update=update, last_eval=None, **args).name == f"update-{update:07d}"
    assert ck.save("final", update=12, last_eval=None, **args) is None  # already saved at this update
    names = [i.name for i in list_checkpoints(ck.root)]
    assert names == ["update-0000008", "update-0000012"]  # keep_checkpoints=2
    nan = EvalMetrics(update=13, val_loss=math.nan, val_bpb=math.nan, gate=GateDecision(triggered=True))
    assert ck.save("final", update=13, last_eval=nan, **args) is None  # never replace a good checkpoint
    assert ck.last.endswith("update-0000012")
    fresh = Checkpointer(ck.root, TrainConfig(), is_main=True)
    loaded = fresh.resume_point(torch.device("cpu"))
    assert Path(loaded.path).name == "update-0000012" and fresh.saved_update == 0  # state['update'] as saved


def _corpus() -> Corpus:
    text = builtin_text(max_bytes=2000)
    tb, vb = text_to_bits(text[:1201]), text_to_bits(text[-201:])
    return Corpus(train=tb, val=vb, source_id="test", content_hash="0", n_bytes=1400, cache_hit=False,
                  cache_path=Path("."))


def _cfg(**train) -> RunConfig:
    t = {"batch_size": 4, "amp": "none", "eval_every": 2, "eval_batches": 1, "save_every": 100, "device": "cpu",
         "steps": 4, **train}
    return RunConfig.model_validate({"model": {"layers": 1, "d_model": 16, "nhead": 2, "max_seq_len": 36}, "train": t})


def test_tensorboard_event_files_hold_the_runs_curves(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events: list = []
    result = Trainer(_cfg(tensorboard=True), tmp_path / "run", corpus=_corpus(),
                     callback=lambda e, p: events.append((e, p))).fit()
    assert result.status == "completed", result.reason
    acc = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    evals = [p for e, p in events if e == "eval"]
    steps = [p for e, p in events if e == "step"]
    assert [s.step for s in acc.Scalars("val/bpb")] == [e.update for e in evals] == [2, 4]
    assert [s.value for s in acc.Scalars("val/bpb")] == pytest.approx([e.val_bpb for e in evals], rel=1e-6)
    assert [s.step for s in acc.Scalars("train/lr")] == [1, 2, 3, 4]
    assert [s.value for s in acc.Scalars("train/lr")] == pytest.approx([s.lr for s in steps], rel=1e-6)
    assert acc.Scalars("train/bpb")[0].value == pytest.approx(steps[0].loss * 9 / math.log(2), rel=1e-6)


def test_tensorboard_without_the_package_fails_the_run_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    result = Trainer(_cfg(tensorboard=True), tmp_path / "run", corpus=_corpus()).fit()
    assert result.status == "failed"
    assert "pip install 'bit-transformer[tensorboard]'" in result.reason and "train.tensorboard" in result.reason


def test_a_second_fit_plans_counts_and_checkpoints_afresh(tmp_path):
    # A timing probe (fit(steps=1)) before the run must not make the run skip its own first checkpoint.
    events: list = []
    tr = Trainer(_cfg(save_every=1, eval_every=100), tmp_path / "run", corpus=_corpus(),
                 callback=lambda e, p: events.append((e, p)))
    assert tr.fit(steps=1).updates_done == 1
    events.clear()
    result = tr.fit(steps=3)
    assert result.status == "completed" and result.updates_done == 3 and result.plan.total_updates == 3
    assert [p.update for e, p in events if e == "checkpoint" and p.kind != "best"] == [1, 2, 3]
