"""The shared quality harness: budget, schedule re-planning, curve, and the Trainer's optimizer settings."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.byte_baseline import VOCAB, ByteTransformer, evaluate_bytes
from benchmarks.quality_harness import Batches, Job, make_optimizer, train_for_budget
from bit_transformer.config import TrainConfig


def test_batches_cover_each_window_once_per_epoch():
    b = Batches(10, 3, seed=0)
    first = np.concatenate([b.next() for _ in range(3)])  # 9 of 10 windows, the partial batch is dropped
    assert len(set(first.tolist())) == 9 and b.epochs == 0
    b.next()
    assert b.epochs == 1


def test_optimizer_groups_match_the_trainer():
    model = ByteTransformer(1, 16, 2, context=8)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.05))
    decay, keep = opt.param_groups
    assert decay["weight_decay"] == 0.05 and keep["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert model.tok_emb.weight in [p for p in keep["params"]]  # embeddings are not decayed
    assert opt.defaults["betas"] == (0.9, 0.99)


def test_a_short_budget_trains_and_reports_a_curve():
    torch.manual_seed(0)
    text = np.frombuffer(b"the cat sat on the mat. " * 400, dtype=np.uint8)
    train, val = text[:8000], text[8000:]
    model = ByteTransformer(1, 32, 2, context=8)
    offsets = np.arange(9)

    def batch(idx):
        w = torch.from_numpy(train[idx[:, None] * 8 + offsets[None, :]].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    job = Job("byte", model, batch, (train.size - 1) // 8,
              lambda m, x, y: F.cross_entropy(m(x).reshape(-1, VOCAB), y.reshape(-1)), 1 / math.log(2),
              lambda m, n: evaluate_bytes(m, val, min_context=6, max_bytes=n)["bits_per_byte"])
    cfg = TrainConfig(batch_size=8, lr=5e-3, warmup_frac=0.05, lr_schedule="cosine")
    res = train_for_budget(job, cfg, 3.0, probe_updates=5, eval_at=(0.5, 1.0), curve_bytes=400, log=lambda m: None)
    assert res["updates"] > 10 and res["train_seconds"] <= 3.0 + 1.0  # the hard stop holds (one update of slack)
    assert len(res["curve"]) == 2 and 1.5 <= res["curve"][0]["train_s"] < res["curve"][1]["train_s"]
    assert res["replans"] >= 1
    # A periodic text is easy: far below the 8 bits/byte of a uniform guess, and the curve went down.
    assert res["val_bits_per_byte"] < 5.0
    assert res["curve"][-1]["val_bpb"] < res["curve"][0]["val_bpb"] + 0.5
    assert res["train_loss"] and res["train_loss"][-1]["train_bpb"] < res["train_loss"][0]["train_bpb"]
