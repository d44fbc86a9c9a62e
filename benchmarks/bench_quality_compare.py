"""Quality per compute: the flat and the framed bit model vs a byte-level transformer of the same size, same
harness and budget.

    python -m benchmarks.bench_quality_compare [--quick] [--budgets 5 15] [--arms bit framed byte]

Tiny Shakespeare (first 90% of the bytes train, last 10% validate: ``data.load_corpus`` with
``val_fraction=0.1``). For each budget (minutes of training, evaluations excluded) the arms train side by
side, one process and one torch thread each. Budgets are process CPU time (``time.process_time``, see
``--clock``): the machine is shared, and CPU time gives every arm the same compute whatever else runs:

* the bit model: BitTransformerLM 4 layers x 64, 2 heads, 144-bit windows (16 bytes), the recipe of
  ``bench_quality`` (batch 16, AdamW lr 5e-3, cosine with 5% warm-up, dropout 0, fp32);
* the framed bit model (``model.arch='framed'``): the same depth, heads and 144-bit windows, one trunk position
  per 9-bit frame built from its bits, exact per-bit head; its width matched to the bit model's parameter
  count; the byte baseline's batch (64 windows) and LR, since it computes per byte like the baseline;
* the byte baseline (:mod:`benchmarks.byte_baseline`): the same blocks, depth and heads over bytes, its
  width matched to the bit model's parameter count, a 16-byte context (what the bit window covers),
  the same optimizer, peak LR, schedule builder, warm-up and clip; batch 64 windows (a 1.5-minute sweep
  on this machine: lr 2e-3 / 5e-3 / 1e-2 at batch 16 gave 2.75 / 2.71 / 2.74 bits per byte, batch 64
  at 5e-3 gave 2.68; a baseline gets its better setting, as the bit recipe got its sweep).

Both are trained by :mod:`benchmarks.quality_harness` (probe, plan, re-plan every 10% of the budget,
hard stop at the budget) and scored on the same validation bytes as bits per byte: the bit model with
``evaluate.evaluate_bits`` (all 9 bit positions, windows overlapping by 108 bits), the byte model with
``byte_baseline.evaluate_bytes`` (windows overlapping so each scored byte sees >= 12 bytes of context,
the same as the bit model's 108 bits). gzip / bzip2 / xz are charged for the same bytes given the
training split. The learning curves (validation bits per byte on the first ``--curve-bytes`` of the
split vs training seconds) go to ``<out>/quality.png``. Writes ``<out>/bench_quality_compare.json``/``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
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
ARMS = ("bit", "framed", "byte")


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
    p.add_argument("--byte-lr", type=float, default=None, help="byte model's peak LR (default: --lr)")
    p.add_argument("--byte-batch-size", type=int, default=64, help="byte model's windows per batch")
    p.add_argument("--warmup-frac", type=float, default=0.05)
    p.add_argument("--lr-schedule", default="cosine")
    p.add_argument("--curve-bytes", type=int, default=None, help="val bytes per curve point (8192; quick 2048)")
    p.add_argument("--eval-bytes", type=int, default=None, help="val bytes of the final score (all; quick 8192)")
    p.add_argument("--framed-batch-size", type=int, default=64, help="framed model's windows per batch")
    p.add_argument("--framed-lr", type=float, default=None, help="framed model's peak LR (default: --byte-lr)")
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
    a.curve_bytes = a.curve_bytes or (2048 if a.quick else 8192)
    a.eval_bytes = a.eval_bytes or (8192 if a.quick else None)
    a.byte_lr = a.byte_lr or a.lr
    a.framed_lr = a.framed_lr or a.byte_lr
    return a


# ------------------------------------------------------------------------------------------ worker side
def load_split(a) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train bits, val bits, train bytes, val bytes) of the corpus split (cached after the first load)."""
    from bit_transformer.config import DataConfig
    from bit_transformer.data import load_corpus

    corpus = load_corpus(DataConfig(source="files", paths=[str(a.data)], val_fraction=0.1), a.out / "cache")
    train, val = np.asarray(corpus.train), np.asarray(corpus.val)

    def to_bytes(bits):
        return np.packbits(bits.reshape(-1, 9)[:, :8], axis=1).reshape(-1)

    return train, val, to_bytes(train), to_bytes(val)


def framed_width(flat_cfg, target: int) -> int:
    """The framed model's d_model (a multiple of nhead) whose parameter count is closest to ``target``."""
    import torch

    from bit_transformer.factory import build_model

    def params(d: int) -> int:
        with torch.device("meta"):
            return build_model(flat_cfg.model_copy(update={"arch": "framed", "d_model": d})).num_parameters()

    widths = range(flat_cfg.nhead, 4 * flat_cfg.d_model + 1, flat_cfg.nhead)
    return min(widths, key=lambda d: abs(params(d) - target))


def bit_job(a, train_bits, val_bits, arch: str = "flat"):
    import torch
    import torch.nn.functional as F

    from benchmarks.quality_harness import Job
    from bit_transformer.config import ModelConfig
    from bit_transformer.evaluate import evaluate_bits
    from bit_transformer.factory import build_model

    cfg = ModelConfig(layers=a.layers, d_model=a.d_model, nhead=a.nhead, max_seq_len=a.seq_len, dropout=0.0,
                      full_attn_logging=False)
    target = build_model(cfg).num_parameters()
    if arch == "framed":
        cfg = cfg.model_copy(update={"arch": "framed", "d_model": framed_width(cfg, target)})
    torch.manual_seed(a.seed)
    model = build_model(cfg)
    L, offsets = a.seq_len, np.arange(a.seq_len + 1)

    def batch(idx):
        w = torch.from_numpy(train_bits[idx[:, None] * L + offsets[None, :]].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def loss(m, x, y):
        out = m(x)
        ce = F.cross_entropy(out.logits.float().reshape(-1, 2), y.reshape(-1))
        return ce + cfg.ponder_weight * out.ponder_cost if cfg.act else ce

    def evaluate(m, max_bytes):
        return evaluate_bits(m, val_bits, seq_len=L, context_bits=(L * 3 // 4) // 9 * 9, batch_size=64,
                             max_bytes=max_bytes, telemetry=False, compressors=False).bits_per_byte

    name = "bit" if arch == "flat" else arch
    job = Job(name, model, batch, (train_bits.size - 1) // L, loss, 9 / math.log(2), evaluate)
    model_info = {"layers": cfg.layers, "d_model": cfg.d_model, "nhead": cfg.nhead, "max_seq_len": cfg.max_seq_len,
                  "arch": cfg.arch}
    return job, {"model": model_info, "config": cfg.model_dump(), "params": model.num_parameters(),
                 "params_vs_bit": model.num_parameters() / target - 1,
                 "window_bytes": L / 9, "eval_context_bits": (L * 3 // 4) // 9 * 9}


def byte_job(a, train_bytes, val_bytes):
    import torch
    import torch.nn.functional as F

    from benchmarks.byte_baseline import VOCAB, evaluate_bytes, matched_byte_model
    from benchmarks.quality_harness import Job
    from bit_transformer.config import ModelConfig
    from bit_transformer.factory import build_model

    bit_cfg = ModelConfig(layers=a.layers, d_model=a.d_model, nhead=a.nhead, max_seq_len=a.seq_len, dropout=0.0)
    target = build_model(bit_cfg).num_parameters()
    torch.manual_seed(a.seed)
    model, diff = matched_byte_model(bit_cfg, target)
    L, offsets = model.context, np.arange(model.context + 1)
    min_context = (a.seq_len * 3 // 4) // 9  # the bit model's 108 context bits = 12 bytes

    def batch(idx):
        w = torch.from_numpy(train_bytes[idx[:, None] * L + offsets[None, :]].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def loss(m, x, y):
        return F.cross_entropy(m(x).float().reshape(-1, VOCAB), y.reshape(-1))

    def evaluate(m, max_bytes):
        return evaluate_bytes(m, val_bytes, min_context=min_context, max_bytes=max_bytes)["bits_per_byte"]

    job = Job("byte", model, batch, (train_bytes.size - 1) // L, loss, 1 / math.log(2), evaluate)
    return job, {"model": {"layers": a.layers, "d_model": model.cfg.d_model, "nhead": a.nhead, "context": L,
                           "vocab": VOCAB}, "params": model.num_parameters(), "params_vs_bit": diff,
                 "window_bytes": L, "eval_min_context_bytes": min_context}


def worker(spec: dict) -> dict:
    import torch

    from benchmarks.quality_harness import train_for_budget
    from bit_transformer.config import TrainConfig

    torch.set_num_threads(1)
    a = parse_args(spec["argv"])
    train_bits, val_bits, train_bytes, val_bytes = load_split(a)
    if spec["kind"] == "bit":
        job, info = bit_job(a, train_bits, val_bits)
        lr, batch = a.lr, a.batch_size
    elif spec["kind"] == "framed":
        job, info = bit_job(a, train_bits, val_bits, arch="framed")
        lr, batch = a.framed_lr, a.framed_batch_size
    else:
        job, info = byte_job(a, train_bytes, val_bytes)
        lr, batch = a.byte_lr, a.byte_batch_size
    train = TrainConfig(batch_size=batch, lr=lr, warmup_frac=a.warmup_frac, lr_schedule=a.lr_schedule, amp="none",
                        seed=a.seed)
    eval_at = (*(QUICK_EVAL_AT if a.quick else FULL_EVAL_AT), 1.0)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter  # one thread: process CPU = training CPU
    t0 = time.perf_counter()
    res = train_for_budget(job, train, spec["minutes"] * 60, eval_at=eval_at, curve_bytes=a.curve_bytes,
                           final_bytes=a.eval_bytes, seed=a.seed, log=lambda m: print(m, flush=True), clock=clock)
    return {**info, **res, "kind": spec["kind"], "minutes": spec["minutes"], "lr": lr, "batch_size": batch,
            "torch_threads": torch.get_num_threads(), "budget_clock": "process_time" if a.clock == "cpu" else
            "perf_counter", "worker_wall_seconds": round(time.perf_counter() - t0, 1)}


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
    _, _, train_bytes, val_bytes = load_split(a)  # builds the cache once, before the workers race for it
    t0 = time.perf_counter()
    runs = run_budgets(a.budgets, argv, a)
    scored = val_bytes[: a.eval_bytes] if a.eval_bytes else val_bytes
    r = {"benchmark": "bench_quality_compare",
         "command": "python -m benchmarks.bench_quality_compare " + " ".join(argv),
         "data": str(a.data), "val_bytes": int(scored.size), "curve_bytes": a.curve_bytes, "budgets_min": a.budgets,
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
