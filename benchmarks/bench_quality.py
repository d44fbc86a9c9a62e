"""Quality recipe: train on Tiny Shakespeare through the product's Trainer for a time budget, report bits per byte.

    .venv/bin/python -m benchmarks.bench_quality --minutes 15                  # the flat recipe
    .venv/bin/python -m benchmarks.bench_quality --arch framed --minutes 15   # the framed recipe

The run is what ``bit-transformer train --time_budget 15m --budget_clock cpu --threads 1`` does: the Trainer
probes the update rate, plans the LR schedule to anneal at the budget, re-plans as the rate drifts and stops at
the budget (``train.time_budget``, evaluations excluded; see docs/training.md). The default clock is process CPU
time with one torch thread, so the budget is training compute whatever else shares the machine. Then the final
checkpoint (its EMA weights when ``--ema_decay`` is set, as ``bit-transformer evaluate`` would load) scores the
whole validation split with ``evaluate.evaluate_bits`` (all 9 bit positions, x 9 / ln 2), next to gzip / bzip2 /
xz on the same bytes given the training text.

Data: ``--data`` (default ``../shared/data/tinyshakespeare/input.txt``), first 90% of the bytes train, the last
10% validate (``data.load_corpus`` with ``val_fraction=0.1``). Writes ``<out>/bench_quality[_framed].json/.md``.

Flat recipe (defaults): 4 layers x d_model 64, 2 heads, 144-bit windows (16 bytes), batch 16, AdamW lr 5e-3,
cosine schedule with 5% warm-up, dropout 0, fp32, one torch thread: on a shared 2-core CPU the run is limited by
the number of optimizer updates, not by model capacity (a GPU sweep at the update counts the CPU reaches put small
models with short windows first; fp32 beats bf16 because the CPU bf16 attention backward is ~6x slower at T=144).
Validation windows overlap by 3/4 (``context_bits``), so every scored bit sees at least 12 bytes of context.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bit_transformer.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
REFERENCE = {"gzip": 3.10, "bzip2": 2.40, "xz": 2.52}  # shared/data/README.md, val given train

# A best-effort recipe for arch='framed' on a 2-core CPU (15 CPU-minutes): the framed trunk runs one position per
# byte, so a wider model with a 64-byte window fits the budget; no dropout (the run sees a few epochs only).
FRAMED_RECIPE = {"layers": 4, "d_model": 128, "nhead": 4, "max_seq_len": 576, "batch_size": 32, "lr": 3e-3,
                 "warmup_frac": 0.05, "lr_schedule": "cosine", "dropout": 0.0}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training budget (evaluations excluded)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="train.budget_clock (default: cpu)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--nhead", type=int, default=2)
    p.add_argument("--dim_feedforward", type=int, default=None)
    p.add_argument("--max_seq_len", type=int, default=144)
    p.add_argument("--chunk_size", type=int, default=None)
    p.add_argument("--overlap", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--accum_steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--warmup_frac", type=float, default=0.05)
    p.add_argument("--lr_schedule", default="cosine")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--ema_decay", type=float, default=None)
    p.add_argument("--amp", default="none", choices=["bf16", "none"],
                   help="none: on CPU the bf16 SDPA backward is slower than fp32 for these sizes")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest for tiny models on a shared 2-core machine (0: torch's choice)")
    p.add_argument("--eval_every", type=int, default=250, help="updates between curve points (validation)")
    p.add_argument("--eval_max_bytes", type=int, default=None, help="score only the first bytes of the val split")
    p.add_argument("--eval_context_bits", type=int, default=None,
                   help="overlap of evaluation windows (multiple of 9); default: 3/4 of the window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=("flat", "framed"), default="flat",
                   help="framed: the framed recipe (FRAMED_RECIPE defaults for flags left unset)")
    raw = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(raw)
    if a.arch == "framed":  # the framed recipe's defaults, for every flag not given on the command line
        given = {x.split("=")[0].lstrip("-") for x in raw if x.startswith("--")}
        for key, value in FRAMED_RECIPE.items():
            if key not in given:
                setattr(a, key, value)
    return a


def build_config(a: argparse.Namespace) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"layers": a.layers, "d_model": a.d_model, "nhead": a.nhead, "dim_feedforward": a.dim_feedforward,
                  "max_seq_len": a.max_seq_len, "chunk_size": a.chunk_size, "overlap": a.overlap, "arch": a.arch,
                  "dropout": a.dropout, "full_attn_logging": False},
        "train": {"batch_size": a.batch_size, "accum_steps": a.accum_steps, "lr": a.lr, "warmup_frac": a.warmup_frac,
                  "lr_schedule": a.lr_schedule, "optimizer": a.optimizer, "ema_decay": a.ema_decay, "amp": a.amp,
                  "eval_every": a.eval_every, "eval_batches": 4, "save_every": 1_000_000, "seed": a.seed,
                  "device": "cpu", "time_budget": a.minutes * 60.0, "budget_clock": a.clock},
        "data": {"source": "files", "paths": [str(a.data)], "val_fraction": 0.1},
    })


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def train_and_score(cfg: RunConfig, corpus, run_dir: Path, *, eval_bytes: int | None = None,
                    context_bits: int | None = None, compressors: bool = True,
                    log: Callable[[str], None] = print) -> dict:
    """Train ``cfg`` (its ``train.time_budget``) with the Trainer in ``run_dir``, then score its final checkpoint.

    The curve: validation bits/byte on the Trainer's evaluation windows at every ``train.eval_every`` updates,
    against the budget spent so far (``train_s``: training seconds on the budget clock, evaluations excluded).
    """
    from bit_transformer.checkpoint import load_model
    from bit_transformer.evaluate import evaluate_bits
    from bit_transformer.training import Trainer

    curve: list[dict] = []
    plans: list = []
    holder: dict = {}

    def on_event(event: str, payload) -> None:
        if event == "plan":
            plans.append(payload)
            if len(plans) == 1:
                log(f"plan: {payload.total_updates} updates at {payload.probe_s_per_update * 1e3:.1f} ms/update "
                    f"(probe) for {payload.time_budget_s:.0f} s")
        elif event == "eval":
            curve.append({"train_s": round(holder["trainer"].state.budget_s, 2), "update": payload.update,
                          "val_bpb": round(payload.val_bpb, 4)})
            log(f"{curve[-1]['train_s']:.0f}s update {payload.update}/{plans[-1].total_updates}: "
                f"val {payload.val_bpb:.3f}")

    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(cfg, run_dir, corpus=corpus, callback=on_event)
    holder["trainer"] = trainer
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training ended without a checkpoint: {result.status} ({result.reason})")
    model, _ = load_model(result.checkpoint)  # what `bit-transformer evaluate` scores (EMA weights if kept)
    L = cfg.model.max_seq_len
    ctx = context_bits if context_bits is not None else (L * 3 // 4) // 9 * 9
    val = corpus.val if eval_bytes is None else corpus.val[: eval_bytes * 9]
    train_bytes = np.packbits(np.asarray(corpus.train).reshape(-1, 9)[:, :8], axis=1).tobytes()
    report = evaluate_bits(model, val, seq_len=L, batch_size=64, context_bits=ctx, telemetry=False,
                           compressors=compressors, compressor_context=train_bytes if compressors else b"")
    plan = result.plan
    return {
        "status": result.status, "reason": result.reason, "updates": result.updates_done,
        "planned_updates": plans[0].total_updates, "replans": plan.replans, "budget_note": plan.budget_note,
        "train_seconds": round(trainer.state.budget_s, 1), "probe_s_per_update": plan.probe_s_per_update,
        "epochs": result.updates_done * plan.bits_per_update / len(corpus.train),
        "final_lr": result.last_step.lr if result.last_step else None, "schedule_final_lr": trainer.schedule.final_lr,
        "completed_schedule": plan.budget_note is None, "params": plan.params, "precision": plan.precision,
        "checkpoint": result.checkpoint, "curve": curve, "val_bytes": report.n_bytes, "eval_context_bits": ctx,
        "val_bits_per_byte": round(report.bits_per_byte, 4),
        "val_data_bits_per_byte": round(report.data_bits_per_byte, 4),
        "val_parity_bits_per_byte": round(report.parity_bits_per_byte, 6),
        "compressors": {k: round(v, 3) for k, v in report.compressors.items()},
    }


def main(argv=None) -> dict:
    from bit_transformer.data import load_corpus

    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = build_config(a)
    corpus = load_corpus(cfg.data, a.out / "cache")
    load_start, t0 = load_avg(), time.perf_counter()
    stem = "bench_quality_framed" if a.arch == "framed" else "bench_quality"
    res = train_and_score(cfg, corpus, a.out / f"{stem}_run", eval_bytes=a.eval_max_bytes,
                          context_bits=a.eval_context_bits, log=lambda m: print(m, flush=True))
    clock = "process CPU time" if a.clock == "cpu" else "wall clock"
    out = {
        "command": "python -m benchmarks.bench_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arch": a.arch, "config": cfg.model_dump(mode="json"), "budget_clock": f"{clock}, {torch.get_num_threads()} "
        "torch thread(s)", "minutes": a.minutes, "wall_seconds": round(time.perf_counter() - t0, 1), **res,
        "reference": REFERENCE, "cpu_count": os.cpu_count(), "load_average_start": load_start,
        "load_average_end": load_avg(),
    }
    comp = ", ".join(f"{k} {v:.2f}" for k, v in out["compressors"].items())
    out["summary"] = (f"{a.arch} {out['val_bits_per_byte']:.3f} bits/byte after {a.minutes:g} min of {clock} "
                      f"({out['updates']} updates, {out['epochs']:.2f} epochs, {out['params']:,} params); {comp}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{stem}.json").write_text(json.dumps(out, indent=1))
    md = ["| model | val bits/byte |", "| --- | ---: |",
          f"| BitTransformerLM {a.arch} (this run) | {out['val_bits_per_byte']:.3f} |"]
    md += [f"| {k} (same bytes, given train) | {v:.3f} |" for k, v in out["compressors"].items()]
    md.append(f"\n{out['summary']}; load average {load_start} -> {out['load_average_end']}.")
    (a.out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    return out


if __name__ == "__main__":
    main()
