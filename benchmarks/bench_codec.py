"""Codec throughput: text -> bits and bits -> text in MB/s of UTF-8 text (issue goal: >= 50 MB/s each way).

    python -m benchmarks.bench_codec [--mb 16] [--repeats 5]

Writes benchmarks/results/bench_codec.json and prints a markdown table. Each direction is timed
``repeats`` times on the same ~16 MB of real text (the built-in corpus, repeated); the median counts.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import RESULTS, write_report
from bit_transformer.bits import bits_to_bytes, bits_to_text, bytes_to_bits, text_to_bits

GOAL_MB_S = 50.0


def sample_text(n_bytes: int) -> str:
    """~n_bytes of real text: the built-in corpus (stdlib docs/sources), repeated to size."""
    try:
        from bit_transformer.sources import builtin_text

        seed = builtin_text(max_bytes=min(n_bytes, 4 << 20))
    except Exception:  # data helper not present: fall back to this repository's own sources
        seed = "".join(p.read_text("utf-8") for p in sorted(Path(__file__).resolve().parents[1].rglob("*.py")))
    raw = seed.encode("utf-8")
    reps = -(-n_bytes // len(raw))
    return (raw * reps)[:n_bytes].decode("utf-8", errors="ignore")


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up (page faults, allocator)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(mb: float = 16.0, repeats: int = 5) -> dict:
    text = sample_text(int(mb * (1 << 20)))
    data = text.encode("utf-8")
    n = len(data)
    bits = text_to_bits(text)
    tensor_bits = torch.from_numpy(bits)  # uint8 tensor: the zero-copy torch path
    assert bits_to_text(bits) == text
    cases = {
        "encode text -> bits (numpy)": lambda: text_to_bits(text),
        "encode bytes -> bits (numpy)": lambda: bytes_to_bits(data),
        "decode bits -> text (numpy, strict)": lambda: bits_to_text(bits),
        "decode bits -> bytes (numpy, strict)": lambda: bits_to_bytes(bits),
        "decode bits -> text (torch uint8)": lambda: bits_to_text(tensor_bits),
    }
    rows = []
    for name, fn in cases.items():
        times = _time(fn, repeats)
        med = statistics.median(times)
        rows.append({"case": name, "median_s": med, "mb_per_s": n / med / 1e6, "times_s": times})
    enc = rows[0]["mb_per_s"]
    dec = rows[2]["mb_per_s"]
    return {
        "benchmark": "bench_codec",
        "text_bytes": n,
        "bits": int(bits.size),
        "repeats": repeats,
        "unit": "MB/s of UTF-8 text (1 MB = 1e6 bytes)",
        "goal_mb_per_s": GOAL_MB_S,
        "encode_mb_per_s": enc,
        "decode_mb_per_s": dec,
        "meets_goal": enc >= GOAL_MB_S and dec >= GOAL_MB_S,
        "rows": rows,
        "summary": f"encode {enc:.0f} MB/s, decode {dec:.0f} MB/s (goal >= {GOAL_MB_S:.0f} MB/s each way)",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
    }


def markdown(result: dict) -> str:
    lines = [
        f"Codec throughput on {result['text_bytes'] / 1e6:.1f} MB of text, median of {result['repeats']} runs",
        "",
        "| case | median s | MB/s |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {r['case']} | {r['median_s']:.3f} | {r['mb_per_s']:.1f} |" for r in result["rows"]]
    verdict = "meets" if result["meets_goal"] else "misses"
    lines += ["", f"encode {result['encode_mb_per_s']:.1f} MB/s, decode {result['decode_mb_per_s']:.1f} MB/s: "
              f"{verdict} the {result['goal_mb_per_s']:.0f} MB/s goal"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=16.0, help="MiB of text to code")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    result = run(args.mb, args.repeats)
    write_report("bench_codec", result, markdown(result), args.out)
    return result


if __name__ == "__main__":
    main()
