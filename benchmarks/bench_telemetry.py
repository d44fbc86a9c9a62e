"""Telemetry overhead: forward with ``return_telemetry=True`` vs ``False`` on a small model, side by side.

    python -m benchmarks.bench_telemetry [--device auto|cpu|cuda] [--repeats 15]

Both variants run interleaved in one process on the same weights and inputs (eval mode, no grad); the
medians are compared. Also timed: the same forward plus ``telemetry.summarize`` (K/C/S on the CPU), the
whole cost a caller pays for a telemetry sample. Two shapes: unchunked attention (full T x T maps logged
by default) and chunked attention (chunk 128, maps off by default, task 12). Writes
benchmarks/results/bench_telemetry.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.report import RESULTS, write_report
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.telemetry import summarize

SHAPES = {
    "unchunked (maps on)": {"chunk_size": None},
    "chunked 128 (maps off)": {"chunk_size": 128, "overlap": 32},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def bench_shape(name: str, extra: dict, *, device: torch.device, batch: int, seq_len: int, repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(layers=4, d_model=128, nhead=8, dropout=0.0, max_seq_len=seq_len, **extra)
    model = build_model(cfg).to(device).eval()
    bits = torch.randint(0, 2, (batch, seq_len), device=device)

    def plain():
        model(bits)

    def telemetry():
        model(bits, return_telemetry=True)

    def with_summary():
        out = model(bits, return_telemetry=True)
        summarize(bits, out.logits, out.telemetry)

    cases = {"plain": plain, "telemetry": telemetry, "telemetry+summarize": with_summary}
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for fn in cases.values():  # warm-up: kernels, mask cache, allocator
            fn()
            fn()
        for _ in range(repeats):  # interleaved, so load drift hits every variant alike
            for key, fn in cases.items():
                times[key].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "shape": name,
        "config": cfg.model_dump(exclude_defaults=True),
        "batch": batch,
        "seq_len": seq_len,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "overhead_ratio": med["telemetry"] / med["plain"],
        "overhead_ratio_with_summarize": med["telemetry+summarize"] / med["plain"],
        "times_s": times,
    }


def run(device: str = "auto", repeats: int = 15, batch: int = 8, seq_len: int = 576) -> dict:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    rows = [bench_shape(n, e, device=dev, batch=batch, seq_len=seq_len, repeats=repeats) for n, e in SHAPES.items()]
    return {
        "benchmark": "bench_telemetry",
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": "layers=4 d_model=128 nhead=8 (eval, no grad)",
        "repeats": repeats,
        "rows": rows,
        "summary": "forward with telemetry / without: " + ", ".join(
            f"{r['overhead_ratio']:.2f}x {r['shape']}" for r in rows) + f" ({dev.type}, {batch}x{seq_len} bits)",
    }


def markdown(result: dict) -> str:
    lines = [
        f"Telemetry overhead on {result['device']} ({result['device_name']}), {result['model']}, "
        f"median of {result['repeats']} interleaved runs",
        "",
        "| attention | batch x T | plain ms | telemetry ms | + summarize ms | ratio | ratio incl. summarize |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        m = r["median_ms"]
        lines.append(
            f"| {r['shape']} | {r['batch']} x {r['seq_len']} | {m['plain']:.2f} | {m['telemetry']:.2f} | "
            f"{m['telemetry+summarize']:.2f} | {r['overhead_ratio']:.2f} | {r['overhead_ratio_with_summarize']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=576)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.device, args.repeats, args.batch, args.seq_len)
    write_report("bench_telemetry", result, markdown(result), args.out)
    return result


if __name__ == "__main__":
    main()
