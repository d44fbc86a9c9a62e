"""Denoising (masked bit diffusion) vs next-bit prediction at equal parameters and updates; sampler speed.

    python -m benchmarks.bench_diffusion [--quick] [--updates N]

Two BitTransformerLMs of one shape (4 layers x 64, 2 heads, 144-bit windows = 16 bytes, dropout 0, fp32,
one torch thread) train on Tiny Shakespeare (the built-in corpus when the file is absent) for the same
number of AdamW updates (batch 16, lr 5e-3, 5% warm-up then cosine), one after the other in this
process: the causal model on the next-bit objective, the bidirectional one on the denoising objective.
An update costs both the same forward and backward, so equal updates is equal compute; the CPU seconds
each arm took are reported next to its score, so the claim can be checked.

Both are scored on the same validation bytes in independent 16-byte windows: the causal model's exact
next-bit code length, the denoising model's NELBO (an upper bound; 8 noise draws per window). Then the
sampler: bytes per second of diffusion generation for several step counts vs causal generation of the
same bytes. Writes ``<out>/bench_diffusion.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, machine_info
from benchmarks.report import RESULTS, write_report
from bit_transformer.bits import text_to_bits
from bit_transformer.config import RunConfig
from bit_transformer.data import builtin_text
from bit_transformer.evaluate import evaluate_bits
from bit_transformer.factory import build_model
from bit_transformer.generate import generate
from bit_transformer.model import BitTransformerLM
from bit_transformer.train_loss import micro_batch_loss

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SEQ = 144


def config(objective: str) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"layers": 4, "d_model": 64, "nhead": 2, "max_seq_len": SEQ, "dropout": 0.0,
                  "causal": objective == "next_bit"},
        "train": {"objective": objective, "batch_size": 16, "lr": 5e-3, "amp": "none", "device": "cpu"},
    })


def corpus() -> tuple[np.ndarray, np.ndarray, str]:
    text = DATA.read_text(encoding="utf-8") if DATA.is_file() else builtin_text()
    cut = int(len(text) * 0.9)
    return text_to_bits(text[:cut]), text_to_bits(text[cut:]), "tinyshakespeare" if DATA.is_file() else "builtin"


def train(objective: str, bits: np.ndarray, updates: int, seed: int = 0) -> tuple[BitTransformerLM, float]:
    """Train one arm; returns the model and the CPU seconds its updates took."""
    cfg = config(objective)
    torch.manual_seed(seed)
    model = build_model(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, 0.99), weight_decay=0.01)
    warm = max(1, updates // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, updates - warm)))))
    rng = np.random.default_rng(seed)
    n_windows = (len(bits) - SEQ - 1) // SEQ
    offsets = np.arange(SEQ + 1)
    cpu0 = time.process_time()
    for _ in range(updates):
        idx = rng.integers(0, n_windows, cfg.train.batch_size) * SEQ
        w = torch.from_numpy(bits[idx[:, None] + offsets[None, :]].astype(np.int64))
        parts = micro_batch_loss(model, w[:, :-1], w[:, 1:], cfg=cfg.train, ponder_weight=0.0, compress=None,
                                 precision="fp32")
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval(), time.process_time() - cpu0


def gen_speed(model: BitTransformerLM, n_bytes: int, **kw) -> float:
    t0 = time.process_time()
    out = generate(model, "T", max_bytes=n_bytes, seed=0, **kw)
    assert out.parity_ok
    return out.new_bytes / max(1e-9, time.process_time() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="200 updates, 2 KB of validation: a smoke check")
    p.add_argument("--updates", type=int, default=None, help="updates per arm (default 3000; quick 200)")
    p.add_argument("--eval-bytes", type=int, default=None, help="validation bytes (default 16384; quick 2048)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    updates = a.updates or (200 if a.quick else 3000)
    eval_bytes = a.eval_bytes or (2048 if a.quick else 16384)
    train_bits, val_bits, source = corpus()
    val = val_bits[: eval_bytes * 9]

    arms = {}
    for objective in ("next_bit", "denoise"):
        model, cpu_s = train(objective, train_bits, updates)
        report = evaluate_bits(model, val, compressors=False, telemetry=False, denoise_samples=8)
        arms[objective] = {"model": model, "cpu_s": round(cpu_s, 1), "bits_per_byte": round(report.bits_per_byte, 3),
                           "bound": report.bound, "params": model.num_parameters()}
    causal_bps = gen_speed(arms["next_bit"]["model"], 15)
    speeds = {steps: gen_speed(arms["denoise"]["model"], 15, steps=steps) for steps in (4, 16, 64)}

    c, d = arms["next_bit"], arms["denoise"]
    result = {
        "source": source, "updates": updates, "eval_bytes": eval_bytes, "seq_len": SEQ,
        "arms": {k: {kk: vv for kk, vv in v.items() if kk != "model"} for k, v in arms.items()},
        "bound_over_causal": round(d["bits_per_byte"] / c["bits_per_byte"], 3),
        "generation_bytes_per_s": {"causal": round(causal_bps, 1),
                                   **{f"diffusion_{s}_steps": round(v, 1) for s, v in speeds.items()}},
        "machine": machine_info(),
    }
    result["summary"] = (f"{updates} updates each, {c['params']:,} params: causal {c['bits_per_byte']:.3f} bpb "
                         f"(exact) vs denoising {d['bits_per_byte']:.3f} bpb (upper bound), "
                         f"{result['bound_over_causal']:.2f}x; diffusion sampling "
                         f"{speeds[4]:.0f}/{speeds[16]:.0f}/{speeds[64]:.0f} B/s at 4/16/64 steps vs causal "
                         f"{causal_bps:.0f} B/s (15 bytes)")
    table = "\n".join([
        "| arm | objective | bits per byte | what it is | CPU s for the updates |",
        "| --- | --- | --- | --- | --- |",
        f"| causal | next_bit | {c['bits_per_byte']:.3f} | exact code length | {c['cpu_s']} |",
        f"| bidirectional | denoise | {d['bits_per_byte']:.3f} | upper bound (NELBO) | {d['cpu_s']} |",
        "",
        "| sampler | bytes/s (15 bytes, 1 thread) |",
        "| --- | --- |",
        f"| causal, bit by bit | {causal_bps:.1f} |",
        *[f"| diffusion, {s} steps | {v:.1f} |" for s, v in speeds.items()],
        "",
        result["summary"],
    ]) + "\n"
    write_report("bench_diffusion", result, table, a.out)
    return result


if __name__ == "__main__":
    main()
