"""Data-parallel throughput: one process vs N processes (torchrun, gloo on CPU), same global batch.

    .venv/bin/python -m benchmarks.bench_distributed [--quick] [--processes 2]

Every variant is the real launch path (``bit-transformer train``, under ``torch.distributed.run`` for N
processes) and trains the same model on the same global batch per update (N processes x batch/N
windows, gradients averaged). Throughput is measured from the run's own step events (wall-clock time
between update ``warmup`` and the last update, so start-up, the first steps and the final checkpoint are
excluded) and the variants are interleaved over ``--repeats`` rounds; the table shows medians.

Variants: one process with one thread (the per-core baseline), one process with N threads (intra-op
parallelism), N processes with one thread each (data parallelism). On a CPU the last two compete for the
same cores, so the ratio says which way of using them trains faster, not how a multi-GPU job scales.
Writes ``<out>/bench_distributed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import machine_info
from benchmarks.report import RESULTS, write_report

MODEL = ["--layers", "4", "--d_model", "128", "--nhead", "8", "--max_seq_len", "576", "--chunk_size", "128",
         "--dropout", "0", "--amp", "none"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller model, fewer updates, one round")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="global windows per update (split across processes)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="updates excluded from the timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def _text(path: Path) -> Path:
    from bit_transformer.data import builtin_text

    path.write_text(builtin_text(400_000), encoding="utf-8")
    return path


def _run(work: Path, text: Path, model: list[str], *, processes: int, threads: int, batch: int, steps: int,
         warmup: int) -> float:
    """bits/s of one training run between update ``warmup`` and the last one."""
    out = Path(tempfile.mkdtemp(dir=work))
    args = ["train", "--data", str(text), *model, "--batch_size", str(batch // processes), "--steps", str(steps),
            "--eval_every", str(10 * steps), "--save_every", str(10 * steps), "--device", "cpu", "--quiet",
            "--json", "--out", str(out)]
    launch = [sys.executable, "-m", "bit_transformer"]
    if processes > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                  "-m", "bit_transformer"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"training failed ({processes} processes): {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    plan = next(r for r in rows if r["event"] == "plan")
    steps_rows = [r for r in rows if r["event"] == "step"]
    first, last = steps_rows[warmup - 1], steps_rows[-1]
    shutil.rmtree(out, ignore_errors=True)
    return (last["update"] - first["update"]) * plan["bits_per_update"] / (last["time"] - first["time"])


def main(argv=None) -> dict:
    a = parse_args(argv)
    n = a.processes
    model = list(MODEL)
    if a.quick:
        model[model.index("--d_model") + 1] = "64"
        model[model.index("--max_seq_len") + 1] = "288"
        a.steps, a.warmup, a.repeats = 12, 3, 1
    variants = {"1 process x 1 thread": (1, 1), f"1 process x {n} threads": (1, n),
                f"{n} processes x 1 thread (DDP, gloo)": (n, 1)}
    samples: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = _text(work / "text.txt")
        for _ in range(a.repeats):  # interleaved: machine-load drift hits every variant alike
            for name, (procs, threads) in variants.items():
                samples[name].append(_run(work, text, model, processes=procs, threads=threads, batch=a.batch,
                                          steps=a.steps, warmup=a.warmup))
    med = {k: statistics.median(v) for k, v in samples.items()}
    base = med["1 process x 1 thread"]
    ddp_name = list(variants)[2]
    rows = [f"| {k} | {v:,.0f} | {v / base:.2f}x |" for k, v in med.items()]
    shape = " ".join(model[:10])
    table = "\n".join([
        f"Training throughput, global batch {a.batch} x {model[model.index('--max_seq_len') + 1]} bits "
        f"({shape}), median of {a.repeats} interleaved rounds, updates {a.warmup}-{a.steps}:",
        "",
        "| variant | bits/s | vs 1 process x 1 thread |",
        "| --- | ---: | ---: |",
        *rows,
        "",
    ])
    ratio = med[ddp_name] / base
    vs_threads = med[ddp_name] / med[f"1 process x {n} threads"]
    summary = (f"{n} processes / 1 process (1 thread each): {ratio:.2f}x; "
               f"{n} processes x 1 thread / 1 process x {n} threads: {vs_threads:.2f}x")
    result = {"benchmark": "distributed", "quick": a.quick, "machine": machine_info(), "processes": n,
              "global_batch": a.batch, "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats, "model": model,
              "samples_bits_per_s": samples, "median_bits_per_s": med, "ratio_ddp_vs_one": ratio,
              "ratio_ddp_vs_threads": vs_threads, "summary": summary, "table": table}
    write_report("bench_distributed", result, table + "\n" + summary + "\n", a.out)
    return result


if __name__ == "__main__":
    main()
