"""Mixed precision on this CPU: bf16 autocast vs fp32 training-step time, attention-heavy and short.

    python -m benchmarks.bench_amp [--quick] [--threads 1]

The playbook claims bf16 autocast makes attention-heavy training 1.2-1.8x faster. This measures it here:
a 4-layer x 256 model (8 heads) trained one step at a time (forward, CE, backward, AdamW), fp32 and bf16
autocast interleaved in one process, warm-up excluded, medians of ``--repeats``, at

* T = 1024 bits, batch 2 (attention-heavy: the attention matmuls are ~1/4 of the useful FLOPs), and
* T = 144 bits, batch 16 (the same number of bits per step, attention a small share),

for the engine's model with full causal attention (SDPA) and for the plain reference
(:mod:`benchmarks.reference_model`, hand-written attention) so that a slow bf16 kernel in one path is
visible as such. The bf16 matmul peak measured in the same run shows what the hardware could give.
Ratio = fp32 step time / bf16 step time (> 1: bf16 is faster). Writes ``<out>/bench_amp.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from benchmarks.bench_throughput import make_step
from benchmarks.common import interleaved_times, machine_info, median
from benchmarks.flops import matmul_peak
from benchmarks.reference_model import ReferenceTransformer
from benchmarks.report import RESULTS, write_report
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model

CLAIM = (1.2, 1.8)


def run_shape(seq_len: int, batch: int, a: argparse.Namespace) -> dict:
    cfg = ModelConfig(layers=a.layers, d_model=a.d_model, nhead=a.nhead, max_seq_len=seq_len, dropout=0.0,
                      full_attn_logging=False)
    bits = torch.randint(0, 2, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))
    steps = {}
    for impl in ("ours", "reference"):
        for prec in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = build_model(cfg) if impl == "ours" else ReferenceTransformer.like(cfg)
            steps[f"{impl} {prec}"] = make_step(model.train(), bits, prec == "bf16")
    times = interleaved_times(steps, a.repeats, a.warmup)
    med = {k: median(v) for k, v in times.items()}
    ratios = {impl: med[f"{impl} fp32"] / med[f"{impl} bf16"] for impl in ("ours", "reference")}
    for k, v in med.items():
        print(f"T={seq_len:<5} batch {batch:<3} {k:<15} {v * 1e3:8.1f} ms", flush=True)
    print(f"T={seq_len}: bf16 speed-up ours x{ratios['ours']:.2f}, reference x{ratios['reference']:.2f}", flush=True)
    return {"seq_len": seq_len, "batch": batch, "median_s": med, "times_s": times, "bf16_speedup": ratios}


def verdict(x: float) -> str:
    if x >= CLAIM[0]:
        return "confirmed" if x <= CLAIM[1] else "exceeded"
    return "refuted" if x < 1.0 else "below the claim"


def summary(r: dict) -> str:
    long = max(r["shapes"], key=lambda s: s["seq_len"])
    parts = [f"T={s['seq_len']}: ours {s['bf16_speedup']['ours']:.2f}x, reference {s['bf16_speedup']['reference']:.2f}x"
             for s in r["shapes"]]
    return ("bf16 autocast speed-up over fp32 (fp32 time / bf16 time): " + "; ".join(parts)
            + f". Playbook claim 1.2-1.8x on attention-heavy training: {verdict(long['bf16_speedup']['ours'])} "
            f"on this CPU (bf16 matmul peak {r['peaks']['bf16'] / r['peaks']['fp32']:.1f}x fp32)")


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"bf16 autocast vs fp32, {r['model']}, training step, median of {r['repeats']} interleaved repeats, "
             f"{m['cpu']} ({m['torch_threads']} threads, flags {', '.join(m['cpu_flags'])}), torch {m['torch']}. "
             f"Matmul peak: fp32 {r['peaks']['fp32'] / 1e9:.0f}, bf16 {r['peaks']['bf16'] / 1e9:.0f} GFLOP/s.", "",
             "| T x batch | model | fp32 ms | bf16 ms | bf16 speed-up |", "| --- | --- | ---: | ---: | ---: |"]
    for s in r["shapes"]:
        for impl in ("ours", "reference"):
            lines.append(f"| {s['seq_len']} x {s['batch']} | {impl} | {s['median_s'][f'{impl} fp32'] * 1e3:.0f} | "
                         f"{s['median_s'][f'{impl} bf16'] * 1e3:.0f} | {s['bf16_speedup'][impl]:.2f}x |")
    return "\n".join(lines) + "\n\n" + r["summary"] + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 layers, T=512 and 144, 2 repeats")
    p.add_argument("--layers", type=int, default=None, help="default 4 (quick 2)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--nhead", type=int, default=8)
    p.add_argument("--shapes", default=None, help="comma list of TxBATCH (default 1024x2,144x16; quick 512x1,144x4)")
    p.add_argument("--repeats", type=int, default=None, help="default 5 (quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.layers = a.layers or (2 if a.quick else 4)
    a.repeats = a.repeats or (2 if a.quick else 5)
    shapes = a.shapes or ("512x1,144x4" if a.quick else "1024x2,144x16")
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = (512, 1024) if a.quick else (1024, 2048)
    peaks = {k: matmul_peak(dt, sizes, 3)["flops"] for k, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    rows = [run_shape(*(int(v) for v in s.split("x")), a) for s in shapes.split(",")]
    r = {"benchmark": "bench_amp", "command": "python -m benchmarks.bench_amp " + " ".join(
        sys.argv[1:] if argv is None else argv), "model": f"{a.layers} layers x {a.d_model} ({a.nhead} heads)",
         "repeats": a.repeats, "peaks": peaks, "claim": CLAIM, "machine": machine_info(), "shapes": rows}
    r["summary"] = summary(r)
    write_report("bench_amp", r, markdown(r), a.out)
    return r


if __name__ == "__main__":
    main()
