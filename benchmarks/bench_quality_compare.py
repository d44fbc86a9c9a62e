"""Quality per compute: the flat and the framed bit model of the same size, same budget, through the Trainer.

    python -m benchmarks.bench_quality_compare [--quick] [--budgets 5 15] [--arms bit framed]

Tiny Shakespeare (first 90% of the bytes train, last 10% validate: ``data.load_corpus`` with
``val_fraction=0.1``). For each budget (minutes of training, evaluations excluded) the arms train side by
side, one process and one torch thread each, each through ``training.Trainer`` with ``train.time_budget`` (probe,
plan, re-plan, hard stop: what ``bit-transformer train --time_budget`` does) on process CPU time (``--clock``):
the machine is shared, and CPU time gives every arm the same compute whatever else runs.

* the bit model: BitTransformerLM 4 layers x 64, 2 heads, 144-bit windows (16 bytes), the recipe of
  ``bench_quality`` (batch 16, AdamW lr 5e-3, cosine with 5% warm-up, dropout 0, fp32);
* the framed bit model (``model.arch='framed'``): the same depth, heads and 144-bit windows, one trunk position
  per 9-bit frame built from its bits, exact per-bit head; its width matched to the bit model's parameter
  count; batch 64 windows (it computes per byte).

The byte-level baseline transformer that used to run here needed a second training loop; it was retired (its
measured figures stay in docs/benchmarks.md as an external reference). Both arms are scored on the same
validation bytes with ``evaluate.evaluate_bits`` (all 9 bit positions, windows overlapping by 3/4), gzip / bzip2 /
xz on the same bytes given the training split. The learning curves (validation bits per byte on the Trainer's
evaluation windows vs training seconds) go to ``<out>/quality.png``. Writes ``<out>/bench_quality_compare.json``
and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, machine_info
from benchmarks.report import RESULTS, write_report

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
FULL_EVAL_AT = (0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 0.85)
QUICK_EVAL_AT = (0.5,)
ARMS = ("bit", "framed")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one 0.4-minute budget, small evaluations: a smoke check")
    p.add_argument("--budgets", type=float, nargs="+", default=None, help="training minutes (default 5 15)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--nhead", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=144, help="bit window (a multiple of 9)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--lr-schedule", default="cosine")
    p.add_argument("--eval-every", type=int, default=None, help="updates between curve points (250; quick 100)")
    p.add_argument("--eval-bytes", type=int, default=None, help="val bytes of the final score (all; quick 8192)")
    p.add_argument("--framed-batch-size", type=int, default=64, help="framed model's windows per batch")
    p.add_argument("--framed-lr", type=float, default=None, help="framed model's peak LR (default: --lr)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="which models to train")
    p.add_argument("--skip", nargs="*", default=[], metavar="MIN:ARM",
                   help="leave one arm out at one budget, e.g. 15:bit (when the full grid does not fit the time)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="budget clock: cpu = process CPU time (default; fair on a shared machine), wall = wall clock")
    p.add_argument("--sequential", action="store_true", help="train the models one after the other")
    p.add_argument("--parallel-budgets", action="store_true",
                   help="train every budget at once (with --clock cpu the results do not change, only wall time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.budgets = a.budgets or ([0.4] if a.quick else [5.0, 15.0])
    a.eval_every = a.eval_every or (100 if a.quick else 250)
    a.eval_bytes = a.eval_bytes or (8192 if a.quick else None)
    a.framed_lr = a.framed_lr or a.lr
    return a


# ------------------------------------------------------------------------------------------ worker side
def load_corpus_split(a):
    from bit_transformer.config import DataConfig
    from bit_transformer.data import load_corpus

    return load_corpus(DataConfig(source="files", paths=[str(a.data)], val_fraction=0.1), a.out / "cache")


def to_bytes(bits) -> np.ndarray:
    return np.packbits(np.asarray(bits).reshape(-1, 9)[:, :8], axis=1).reshape(-1)


def framed_width(flat_cfg, target: int) -> int:
    """The framed model's d_model (a multiple of nhead) whose parameter count is closest to ``target``."""
    import torch

    from bit_transformer.factory import build_model

    def params(d: int) -> int:
        with torch.device("meta"):
            return build_model(flat_cfg.model_copy(update={"arch": "framed", "d_model": d})).num_parameters()

    widths = range(flat_cfg.nhead, 4 * flat_cfg.d_model + 1, flat_cfg.nhead)
    return min(widths, key=lambda d: abs(params(d) - target))


def arm_config(a, kind: str, minutes: float):
    """The RunConfig of one arm: the flat recipe, or the framed model matched to its parameter count."""
    import torch

    from bit_transformer.config import ModelConfig, RunConfig
    from bit_transformer.factory import build_model

    model = ModelConfig(layers=a.layers, d_model=a.d_model, nhead=a.nhead, max_seq_len=a.seq_len, dropout=0.0,
                        full_attn_logging=False)
    with torch.device("meta"):
        target = build_model(model).num_parameters()
    lr, batch = a.lr, a.batch_size
    if kind == "framed":
        model = model.model_copy(update={"arch": "framed", "d_model": framed_width(model, target)})
        lr, batch = a.framed_lr, a.framed_batch_size
    train = {"batch_size": batch, "lr": lr, "warmup_frac": a.warmup_frac, "lr_schedule": a.lr_schedule,
             "amp": "none", "seed": a.seed, "device": "cpu", "eval_every": a.eval_every, "eval_batches": 4,
             "save_every": 1_000_000, "time_budget": minutes * 60.0, "budget_clock": a.clock}
    return RunConfig(model=model, train=train, data={"source": "files", "paths": [str(a.data)],
                                                     "val_fraction": 0.1}), target


def worker(spec: dict) -> dict:
    import torch

    from benchmarks.bench_quality import train_and_score

    torch.set_num_threads(1)
    a = parse_args(spec["argv"])
    cfg, target = arm_config(a, spec["kind"], spec["minutes"])
    t0 = time.perf_counter()
    run_dir = a.out / f"quality_{spec['kind']}_{spec['minutes']:g}min_run"
    res = train_and_score(cfg, load_corpus_split(a), run_dir, eval_bytes=a.eval_bytes, compressors=False,
                          log=lambda m: print(f"[{spec['kind']}] {m}", flush=True))
    m = cfg.model
    return {**res, "kind": spec["kind"], "minutes": spec["minutes"], "lr": cfg.train.lr,
            "batch_size": cfg.train.batch_size, "config": m.model_dump(mode="json"),
            "model": {"layers": m.layers, "d_model": m.d_model, "nhead": m.nhead, "max_seq_len": m.max_seq_len,
                      "arch": m.arch},
            "params_vs_bit": res["params"] / target - 1, "torch_threads": torch.get_num_threads(),
            "budget_clock": a.clock, "worker_wall_seconds": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------ driver side
def spawn(kind: str, minutes: float, argv: list[str], out: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start one worker; its log and its result JSON go to files (no pipes that could fill up)."""
    stem = out / f"quality_{kind}_{minutes:g}min"
    spec = json.dumps({"kind": kind, "minutes": minutes, "argv": argv, "result": str(stem) + ".json"})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    Path(str(stem) + ".json").unlink(missing_ok=True)
    with open(str(stem) + ".log", "w") as log:
        # Own session per worker: with Linux autogroup scheduling, workers sharing the driver's session would
        # share one session's CPU share between them on a busy machine (CPU-time budgets stay fair either way).
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_quality_compare", *argv, "--worker", spec],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    return proc, Path(str(stem) + ".log"), Path(str(stem) + ".json")


def _follow(started: dict, seen: dict) -> None:
    """Echo what the workers logged since the last call (their logs are files, read by offset)."""
    for k, (_, log, _) in started.items():
        text = log.read_text() if log.is_file() else ""
        if len(text) > seen.get(k, 0):
            print(text[seen.get(k, 0):], end="", flush=True)
            seen[k] = len(text)


def run_budgets(budgets: list[float], argv: list[str], a) -> dict:
    """Every (budget, arm) worker; one budget after the other unless ``--parallel-budgets`` (CPU-time budgets
    stay fair under any concurrency; only wall time changes)."""
    groups = [budgets] if a.parallel_budgets else [[m] for m in budgets]
    runs: dict = {}
    for group in groups:
        started: dict = {}
        seen: dict = {}
        for minutes in group:
            for k in a.arms:
                if f"{minutes:g}:{k}" in a.skip:
                    continue
                started[(minutes, k)] = spawn(k, minutes, argv, a.out)
                while a.sequential and started[(minutes, k)][0].poll() is None:
                    time.sleep(2)
                    _follow(started, seen)
        try:
            while any(proc.poll() is None for proc, _, _ in started.values()):
                time.sleep(2)
                _follow(started, seen)
        finally:  # the workers run in their own sessions: stop them if the driver is stopped
            for proc, _, _ in started.values():
                if proc.poll() is None:
                    proc.kill()
        _follow(started, seen)
        for (minutes, k), (proc, log, result) in started.items():
            if proc.returncode != 0 or not result.is_file():
                raise RuntimeError(f"the {k} worker ({minutes:g} min) failed with exit {proc.returncode}; see {log}")
            runs.setdefault(f"{minutes:g}", {})[k] = json.loads(result.read_text())
    return {f"{m:g}": runs[f"{m:g}"] for m in budgets}


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    if a.worker:
        spec = json.loads(a.worker)
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return {}
    from benchmarks.quality_plot import markdown, plot, summary
    from bit_transformer.baselines import compressor_bpb

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the workers' cleanup on kill

    a.out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus_split(a)  # builds the cache once, before the workers race for it
    train_bytes, val_bytes = to_bytes(corpus.train), to_bytes(corpus.val)
    t0 = time.perf_counter()
    runs = run_budgets(a.budgets, argv, a)
    scored = val_bytes[: a.eval_bytes] if a.eval_bytes else val_bytes
    r = {"benchmark": "bench_quality_compare",
         "command": "python -m benchmarks.bench_quality_compare " + " ".join(argv),
         "data": str(a.data), "val_bytes": int(scored.size), "eval_every": a.eval_every, "budgets_min": a.budgets,
         "runs": runs,
         "compressors": compressor_bpb(scored.tobytes(), train_bytes.tobytes()),
         "concurrent": not a.sequential, "wall_seconds": round(time.perf_counter() - t0, 1),
         "budget_clock": "process CPU time" if a.clock == "cpu" else "wall clock",
         "machine": machine_info()}
    r["summary"] = summary(r)
    r["plot"] = str(plot(r, a.out / "quality.png"))
    write_report("bench_quality_compare", r, markdown(r), a.out)
    return r


if __name__ == "__main__":
    main()
