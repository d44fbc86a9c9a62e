"""Quality recipe: train on Tiny Shakespeare for a wall-clock budget, report validation bits per byte.

    .venv/bin/python -m benchmarks.bench_quality --minutes 15
    .venv/bin/python -m benchmarks.bench_quality --arch framed --minutes 15   # the framed recipe (CPU time)

``--arch framed`` runs the framed model's recipe (see ``FRAMED_RECIPE``) through
:mod:`benchmarks.quality_harness` with a process-CPU-time budget (one torch thread, so CPU time is training
time whatever else shares the machine), then scores the whole validation split the same way.

Data: ``--data`` (default ``../shared/data/tinyshakespeare/input.txt``), first 90% of the bytes train,
the last 10% validate (the split of ``data.load_corpus`` with ``val_fraction=0.1``). The budget covers
training only: a short probe measures this machine's update rate and the run is planned for the number
of updates that fit (so the LR schedule anneals fully); at 30% and 60% of the budget the run is
cancelled, re-planned from the rate actually seen and resumed (the machine is shared, its speed drifts),
and a timer stops it cleanly at the budget. Then the whole validation split is scored with
``evaluate.evaluate_bits`` (all 9 bit positions, x 9 / ln 2) next to gzip / bzip2 / xz on the same bytes
given the training text.
Writes ``<out>/bench_quality.json`` and ``.md``.

Recipe (defaults): 4 layers x d_model 64, 2 heads, 144-bit windows (16 bytes), batch 16, AdamW lr 5e-3,
cosine schedule with 5% warm-up, dropout 0, fp32, one torch thread. Why: on a shared 2-core CPU the run
is limited by the number of optimizer updates, not by model capacity. A sweep (on a GPU, for speed) at
the update counts the CPU reaches in 15 minutes put small models with short windows and batch 16 first (4x64/T=288: 3.55
bpb after 2000 updates; 3x96/T=288: 5.0 after 1500; 4x128: 4.8 after 900; lr 1e-2 diverged into a
plateau); fp32 beats bf16 here because the CPU bf16 attention backward is ~6x slower than fp32 at
T=144, and one thread beats two when other processes share the cores. Validation windows overlap by 3/4
(``context_bits=108``), so every scored bit sees at least 12 bytes of context.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bit_transformer.config import RunConfig
from bit_transformer.data import load_corpus
from bit_transformer.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
REFERENCE = {"gzip": 3.10, "bzip2": 2.40, "xz": 2.52}  # shared/data/README.md, val given train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
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
    p.add_argument("--amp", default="none", choices=["bf16", "none"],
                   help="none: on CPU the bf16 SDPA backward is slower than fp32 for these sizes")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest for tiny models on a shared 2-core machine (0: torch's choice)")
    p.add_argument("--probe_updates", type=int, default=40, help="updates timed to plan the run")
    p.add_argument("--eval_max_bytes", type=int, default=None, help="score only the first bytes of the val split")
    p.add_argument("--eval_context_bits", type=int, default=None,
                   help="overlap of evaluation windows (multiple of 9); default: 3/4 of the window")
    p.add_argument("--replan_at", type=float, nargs="*", default=[0.3, 0.6],
                   help="fractions of the budget where the horizon is re-planned from the rate seen so far")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", choices=("flat", "framed"), default="flat",
                   help="framed: the framed recipe (FRAMED_RECIPE defaults for flags left unset), CPU-time budget")
    raw = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(raw)
    if a.arch == "framed":  # the framed recipe's defaults, for every flag not given on the command line
        given = {x.split("=")[0].lstrip("-") for x in raw if x.startswith("--")}
        for key, value in FRAMED_RECIPE.items():
            if key not in given:
                setattr(a, key, value)
    return a


# A best-effort recipe for arch='framed' on a 2-core CPU (15 CPU-minutes): the framed trunk runs one position per
# byte, so a wider model with a 64-byte window fits the budget; no dropout (the run sees a few epochs only).
FRAMED_RECIPE = {"layers": 4, "d_model": 128, "nhead": 4, "max_seq_len": 576, "batch_size": 32, "lr": 3e-3,
                 "warmup_frac": 0.05, "lr_schedule": "cosine", "dropout": 0.0}


def build_config(a: argparse.Namespace) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"layers": a.layers, "d_model": a.d_model, "nhead": a.nhead, "dim_feedforward": a.dim_feedforward,
                  "max_seq_len": a.max_seq_len, "chunk_size": a.chunk_size, "overlap": a.overlap, "arch": a.arch,
                  "dropout": a.dropout, "full_attn_logging": False},
        "train": {"batch_size": a.batch_size, "accum_steps": a.accum_steps, "lr": a.lr, "warmup_frac": a.warmup_frac,
                  "lr_schedule": a.lr_schedule, "amp": a.amp, "eval_every": 10_000, "eval_batches": 2,
                  "save_every": 10_000, "seed": a.seed, "device": "cpu"},
        "data": {"source": "files", "paths": [str(a.data)], "val_fraction": 0.1},
    })


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def framed_main(a: argparse.Namespace, argv) -> dict:
    """The framed recipe: the quality harness on a process-CPU-time budget, the whole validation split scored."""
    import torch.nn.functional as F

    from benchmarks.quality_harness import Job, train_for_budget
    from bit_transformer.evaluate import evaluate_bits
    from bit_transformer.factory import build_model

    cfg = build_config(a)
    corpus = load_corpus(cfg.data, a.out / "cache")
    train_bits, val_bits = np.asarray(corpus.train), np.asarray(corpus.val)
    torch.manual_seed(a.seed)
    model = build_model(cfg.model)
    L, offsets = cfg.model.max_seq_len, np.arange(cfg.model.max_seq_len + 1)
    ctx = a.eval_context_bits if a.eval_context_bits is not None else (L * 3 // 4) // 9 * 9

    def batch(idx):
        w = torch.from_numpy(train_bits[idx[:, None] * L + offsets[None, :]].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def loss(m, x, y):
        return F.cross_entropy(m(x).logits.float().reshape(-1, 2), y.reshape(-1))

    def evaluate(m, max_bytes):
        return evaluate_bits(m, val_bits, seq_len=L, context_bits=ctx, batch_size=64, max_bytes=max_bytes,
                             telemetry=False, compressors=False).bits_per_byte

    job = Job("framed", model, batch, (train_bits.size - 1) // L, loss, 9 / math.log(2), evaluate)
    load_start, t0 = load_avg(), time.perf_counter()
    res = train_for_budget(job, cfg.train, a.minutes * 60, eval_at=(0.25, 0.5, 0.75, 1.0), curve_bytes=8192,
                           final_bytes=None, seed=a.seed, log=lambda m: print(m, flush=True), clock=time.process_time)
    val = val_bits if a.eval_max_bytes is None else val_bits[: a.eval_max_bytes * 9]
    train_bytes = np.packbits(train_bits.reshape(-1, 9)[:, :8], axis=1).tobytes()
    report = evaluate_bits(model, val, seq_len=L, batch_size=64, context_bits=ctx, telemetry=False,
                           compressor_context=train_bytes)
    out = {
        "command": "python -m benchmarks.bench_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arch": "framed", "config": cfg.model_dump(mode="json"), "params": model.num_parameters(),
        "budget_clock": "process CPU time (time.process_time), 1 torch thread", "minutes": a.minutes,
        "wall_seconds": round(time.perf_counter() - t0, 1), **{k: v for k, v in res.items() if k != "train_loss"},
        "val_bytes": report.n_bytes, "eval_context_bits": ctx,
        "val_bits_per_byte": round(report.bits_per_byte, 4),
        "val_data_bits_per_byte": round(report.data_bits_per_byte, 4),
        "val_parity_bits_per_byte": round(report.parity_bits_per_byte, 6),
        "compressors": {k: round(v, 3) for k, v in report.compressors.items()}, "reference": REFERENCE,
        "torch_threads": torch.get_num_threads(), "load_average_start": load_start, "load_average_end": load_avg(),
    }
    comp = ", ".join(f"{k} {v:.2f}" for k, v in out["compressors"].items())
    out["summary"] = (f"framed {out['val_bits_per_byte']:.3f} bits/byte after {a.minutes:g} CPU-min "
                      f"({out['updates']} updates, {out['epochs']:.2f} epochs, {out['params']:,} params); {comp}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_quality_framed.json").write_text(json.dumps(out, indent=1))
    md = ["| model | val bits/byte |", "| --- | ---: |", f"| BitTransformerLM framed (this run) | "
          f"{out['val_bits_per_byte']:.3f} |"] + [f"| {k} (same bytes, given train) | {v:.3f} |"
                                                   for k, v in out["compressors"].items()]
    md.append(f"\n{out['summary']}; load average {load_start} -> {out['load_average_end']}.")
    (a.out / "bench_quality_framed.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), flush=True)
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.arch == "framed":
        return framed_main(a, argv)
    cfg = build_config(a)
    run_dir = a.out / "quality_run"
    corpus = load_corpus(cfg.data, a.out / "cache")
    budget = a.minutes * 60.0
    load_start = load_avg()

    # 1. probe: how many updates fit in the budget on this machine right now?
    probe = Trainer(cfg, a.out / "quality_probe", corpus=corpus)
    t0 = time.perf_counter()
    probe.fit(steps=1)  # warm-up (allocations, first-call costs)
    t1 = time.perf_counter()
    probe.fit(steps=a.probe_updates)
    per_update = (time.perf_counter() - t1) / a.probe_updates
    probe_s = time.perf_counter() - t0
    steps = max(1, math.floor(budget * 0.93 / per_update))  # headroom: the machine is shared
    print(f"probe: {per_update:.2f} s/update -> planning {steps} updates for {a.minutes:g} min "
          f"(load average {load_avg()})", flush=True)

    # 2. the run. The machine is shared, so its speed drifts: at each re-plan point the run is
    # cancelled (a checkpoint), the horizon re-computed from the rate actually seen, and resumed; the
    # LR schedule is rebuilt for the new horizon. A last timer stops it cleanly at the budget.
    shutil.rmtree(run_dir, ignore_errors=True)
    last = {"t": time.perf_counter(), "steps": steps}

    def progress(event, payload):
        if event == "step" and (payload.update % 200 == 0 or time.perf_counter() - last["t"] > 60):
            last["t"] = time.perf_counter()
            print(f"update {payload.update}/{last['steps']} loss {payload.loss:.4f} lr {payload.lr:.2e} "
                  f"{payload.bits_per_s / 1e3:.1f}k bits/s eta {payload.eta_s:.0f}s", flush=True)

    t_train = time.perf_counter()
    replans = [budget * f for f in a.replan_at]
    result, resume, trainer, since = None, False, None, (0, 0.0)  # since: (updates, seconds) at the last re-plan
    for stop_at in [*replans, budget]:
        cancel = threading.Event()
        timer = threading.Timer(max(0.0, stop_at - (time.perf_counter() - t_train)), cancel.set)
        trainer = Trainer(cfg, run_dir, corpus=corpus, callback=progress, cancel=cancel)
        timer.start()
        result = trainer.fit(steps=steps, resume=resume)
        timer.cancel()
        if result.status != "cancelled" or stop_at == budget:
            break
        elapsed = time.perf_counter() - t_train
        # Updates per second over the segment since the last re-plan (its restart included): the run's average
        # lags a machine that slowed down, and the plan would then overshoot the budget before annealing.
        rate = (result.updates_done - since[0]) / max(elapsed - since[1], 1e-9)
        since = (result.updates_done, elapsed)
        steps = result.updates_done + max(1, math.floor(rate * (budget - elapsed) * 0.96))
        last["steps"], resume = steps, True
        print(f"re-plan at {elapsed:.0f}s: {rate:.2f} updates/s -> {steps} updates in total", flush=True)
    train_s = time.perf_counter() - t_train
    load_end = load_avg()

    # 3. score the whole validation split
    from bit_transformer.evaluate import evaluate_bits

    val = corpus.val if a.eval_max_bytes is None else corpus.val[: a.eval_max_bytes * 9]
    train_bytes = np.packbits(np.asarray(corpus.train).reshape(-1, 9)[:, :8], axis=1).tobytes()
    ctx = a.eval_context_bits if a.eval_context_bits is not None else (cfg.model.max_seq_len * 3 // 4) // 9 * 9
    report = evaluate_bits(trainer.model, val, seq_len=cfg.model.max_seq_len, batch_size=64, amp=a.amp,
                           context_bits=ctx, telemetry=False, compressor_context=train_bytes)
    out = {
        "command": "python -m benchmarks.bench_quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": cfg.model_dump(mode="json"),
        "status": result.status,
        "reason": result.reason,
        "updates": result.updates_done,
        "planned_updates": steps,
        "replan_at": a.replan_at,
        "params": result.plan.params,
        "precision": result.plan.precision,
        "train_seconds": round(train_s, 1),
        "probe_seconds": round(probe_s, 1),
        "bits_trained": result.updates_done * result.plan.bits_per_update,
        "epochs_seen": round(result.updates_done * result.plan.bits_per_update / len(corpus.train), 3),
        "val_bytes": report.n_bytes,
        "eval_context_bits": ctx,
        "val_bits_per_byte": round(report.bits_per_byte, 4),
        "val_data_bits_per_byte": round(report.data_bits_per_byte, 4),
        "val_parity_bits_per_byte": round(report.parity_bits_per_byte, 4),
        "bit_accuracy": round(report.bit_accuracy, 4),
        "eval_seconds": round(report.elapsed_s, 1),
        "compressors": {k: round(v, 3) for k, v in report.compressors.items()},
        "reference": REFERENCE,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": load_end,
    }
    comp = ", ".join(f"{k} {v:.2f}" for k, v in out["compressors"].items())
    out["summary"] = (f"{out['val_bits_per_byte']:.2f} bits/byte after {out['train_seconds'] / 60:.0f} CPU-min "
                      f"({out['updates']} updates); {comp}")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "bench_quality.json").write_text(json.dumps(out, indent=1))
    rows = [("BitTransformerLM (this run)", out["val_bits_per_byte"])] + [
        (f"{k} (same bytes, given train)", v) for k, v in out["compressors"].items()]
    md = ["| model | val bits/byte |", "| --- | ---: |"] + [f"| {n} | {v:.3f} |" for n, v in rows]
    md.append(f"\n{out['params']:,} params, {out['updates']} updates in {out['train_seconds']:.0f} s "
              f"({out['epochs_seen']} epochs), {out['precision']}, load average {load_start} -> {load_end}.")
    (a.out / "bench_quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps({k: out[k] for k in ("val_bits_per_byte", "val_data_bits_per_byte", "updates",
                                           "train_seconds", "status")}))
    return out


if __name__ == "__main__":
    main()
