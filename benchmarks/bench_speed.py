"""Speed of the default configuration, side by side in one process: the dropout trap, flat vs framed training,
and generation with and without the KV cache.

    python -m benchmarks.bench_speed [--quick] [--sections dropout arch generate] [--threads N]

* ``dropout``: one training step (forward, next-bit CE, backward, AdamW) of the default ``ModelConfig``
  (4x128, dropout 0.1, 576 bits) under the default bf16 autocast, with attention dropout coupled to the
  residual dropout as before (``attn_dropout=0.1``: CPU SDPA leaves its fused kernel) and with the new
  default (``attn_dropout=0``; residual dropout kept). Same weights, same batch.
* ``arch``: training bits/s of the flat model vs ``arch='framed'`` at equal parameters (the framed model's
  ``d_model`` is the largest multiple of its heads that does not exceed the flat model's parameter count)
  and equal window bytes (64 bytes).
* ``generate``: bytes/s of ``generate(max_bytes=N)`` for each architecture, uncached (``cache=False``,
  what generation did before: the whole window re-run for every new bit) and with the KV cache, plus a
  check that both give the same text for the same seed.

Step times are wall-clock medians of interleaved repeats (warm-up excluded), so load drift on a shared
machine hits every variant alike; the process CPU time of each variant is recorded next to it.
Writes ``<out>/bench_speed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, median
from benchmarks.report import RESULTS, write_report
from bit_transformer.config import FRAME_BITS, ModelConfig
from bit_transformer.factory import build_model
from bit_transformer.generate import generate

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?\n"


def train_step(model: torch.nn.Module, bits: torch.Tensor, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = bits[:, :-1], bits[:, 1:]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).logits
            loss = F.cross_entropy(logits.float().reshape(-1, 2), y.reshape(-1))
        loss.backward()
        opt.step()

    return step


def timed(steps: dict, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Interleaved wall and process-CPU seconds per call (order reversed every other round)."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    names = list(steps)
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: {"median_s": median(wall[k]), "cpu_median_s": median(cpu[k]), "times_s": wall[k]} for k in names}


def batch_bits(batch: int, seq_len: int) -> torch.Tensor:
    return torch.randint(0, 2, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))


def section_dropout(a: argparse.Namespace) -> dict:
    base = ModelConfig()
    cfgs = {"before (attn_dropout=dropout=0.1)": base.model_copy(update={"attn_dropout": base.dropout}),
            "after (attn_dropout=0, dropout=0.1)": base}
    bits = batch_bits(a.batch, base.max_seq_len)
    steps = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        steps[name] = train_step(build_model(cfg).train(), bits, bf16=True)
    rows = timed(steps, a.repeats)
    for row in rows.values():
        row["bits_per_s"] = a.batch * base.max_seq_len / row["median_s"]
    before, after = rows.values()
    ratio = before["median_s"] / after["median_s"]
    for name, row in rows.items():
        print(f"dropout  {name:<38} {row['median_s'] * 1e3:8.0f} ms  {row['bits_per_s']:>9,.0f} bits/s", flush=True)
    return {"batch": a.batch, "seq_len": base.max_seq_len, "config": base.model_dump(exclude_defaults=True),
            "rows": rows, "speedup": ratio}


def framed_like(flat: ModelConfig) -> ModelConfig:
    """The framed config with the flat one's depth/heads and the widest d_model within its parameter count."""
    target = build_model(flat).num_parameters()
    best = None
    for d in range(flat.nhead, 4 * flat.d_model + 1, flat.nhead):
        cfg = flat.model_copy(update={"arch": "framed", "d_model": d})
        with torch.device("meta"):
            n = build_model(cfg).num_parameters()
        if n > target:
            break
        best = cfg
    assert best is not None
    return best


def section_arch(a: argparse.Namespace) -> dict:
    flat = ModelConfig(dropout=0.0)
    framed = framed_like(flat)
    bits = batch_bits(a.batch, flat.max_seq_len)
    cfgs = {"flat": flat, "framed": framed}
    steps = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        steps[name] = train_step(build_model(cfg).train(), bits, bf16=True)
    rows = timed(steps, a.repeats)
    for name, row in rows.items():
        row["bits_per_s"] = a.batch * flat.max_seq_len / row["median_s"]
        row["params"] = build_model(cfgs[name]).num_parameters()
        row["config"] = cfgs[name].model_dump(exclude_defaults=True)
        print(f"arch     {name:<8} {row['params']:>8,} params {row['median_s'] * 1e3:8.0f} ms  "
              f"{row['bits_per_s']:>9,.0f} bits/s", flush=True)
    return {"batch": a.batch, "window_bytes": flat.max_seq_len // FRAME_BITS, "rows": rows,
            "speedup": rows["flat"]["median_s"] / rows["framed"]["median_s"]}


def section_generate(a: argparse.Namespace) -> dict:
    rows: dict[str, dict] = {}
    same: dict[str, bool] = {}
    for window in a.gen_windows:
        # 2 x 32, ~30k params at a 72-bit window: the tiny model of issue 13's measurement
        # (generate(max_bytes=4096) took 34-61 s); the same model at the default 576-bit window.
        flat = ModelConfig(layers=2, d_model=32, nhead=4, max_seq_len=window, dropout=0.0)
        texts = {}
        for arch, cfg in {"flat": flat, "framed": framed_like(flat)}.items():
            torch.manual_seed(0)
            model = build_model(cfg).eval()
            for cache in (False, True):
                n = a.gen_bytes_uncached if not cache else a.gen_bytes
                t0, c0 = time.perf_counter(), time.process_time()
                out = generate(model, PROMPT, max_bytes=n, seed=1, cache=cache)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                key = f"{arch} {'cached' if cache else 'uncached'} T={window}"
                texts[(arch, cache)] = out.text
                rows[key] = {"window_bits": window, "bytes": n, "wall_s": wall, "cpu_s": cpu,
                             "bytes_per_s": n / wall, "bytes_per_cpu_s": n / cpu, "params": model.num_parameters()}
                print(f"generate {key:<24} {n:>5} bytes {wall:7.2f} s  {n / wall:>8,.1f} bytes/s  "
                      f"{n / cpu:>8,.1f} bytes/CPU-s", flush=True)
            short = texts[(arch, False)]
            same[f"{arch} T={window}"] = texts[(arch, True)][: len(short)] == short
        base = rows[f"flat uncached T={window}"]
        for row in rows.values():
            if row["window_bits"] == window:
                row["x_flat_uncached"] = row["bytes_per_s"] / base["bytes_per_s"]
                row["x_flat_uncached_cpu"] = row["bytes_per_cpu_s"] / base["bytes_per_cpu_s"]
    return {"rows": rows, "cached_equals_uncached": same}


def markdown(r: dict) -> str:
    lines = [f"Machine: {r['machine']['cpu']} ({r['machine']['torch_threads']} torch threads), shared; "
             "wall-clock medians of interleaved repeats.", ""]
    if "dropout" in r:
        d = r["dropout"]
        lines += [f"Default config training step, batch {d['batch']} x {d['seq_len']} bits, bf16 autocast:", "",
                  "| variant | ms/step | bits/s |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v['median_s'] * 1e3:.0f} | {v['bits_per_s']:,.0f} |" for k, v in d["rows"].items()]
        lines += ["", f"attn_dropout=0 is {d['speedup']:.2f}x faster.", ""]
    if "arch" in r:
        d = r["arch"]
        lines += [f"Flat vs framed training, batch {d['batch']} x {d['window_bytes']} bytes:", "",
                  "| arch | params | ms/step | bits/s |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {k} | {v['params']:,} | {v['median_s'] * 1e3:.0f} | {v['bits_per_s']:,.0f} |"
                  for k, v in d["rows"].items()]
        lines += ["", f"framed is {d['speedup']:.2f}x flat's bits/s.", ""]
    if "generate" in r:
        d = r["generate"]
        lines += ["Generation (seeded sampling, parity set):", "", "| variant | params | bytes | s | bytes/s | "
                  "bytes per CPU-s | x flat uncached (wall / CPU) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {v['params']:,} | {v['bytes']} | {v['wall_s']:.2f} | {v['bytes_per_s']:,.1f} | "
                  f"{v['bytes_per_cpu_s']:,.1f} | {v['x_flat_uncached']:.1f} / {v['x_flat_uncached_cpu']:.1f} |"
                  for k, v in d["rows"].items()]
        lines += ["", f"cached text equals uncached: {d['cached_equals_uncached']}", ""]
    return "\n".join(lines) + "\n" + r["summary"] + "\n"


def summary(r: dict) -> str:
    parts = []
    if "dropout" in r:
        rows = list(r["dropout"]["rows"].values())
        parts.append(f"default config training {rows[0]['bits_per_s']:,.0f} -> {rows[1]['bits_per_s']:,.0f} bits/s "
                     f"({r['dropout']['speedup']:.1f}x) with attn_dropout=0")
    if "arch" in r:
        parts.append(f"framed trains {r['arch']['speedup']:.1f}x flat's bits/s at equal params")
    if "generate" in r:
        g = r["generate"]["rows"]
        parts.append("generation per CPU-second vs flat uncached (the pre-cache path): " + ", ".join(
            f"{k} {v['x_flat_uncached_cpu']:.1f}x" for k, v in g.items() if not k.startswith("flat uncached")))
    return "; ".join(parts)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="batch 2, 2 repeats, short generations")
    p.add_argument("--sections", nargs="+", choices=("dropout", "arch", "generate"),
                   default=["dropout", "arch", "generate"])
    p.add_argument("--batch", type=int, default=None, help="sequences per training step (default 8; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 5; quick 2)")
    p.add_argument("--gen-bytes", type=int, default=None, help="bytes generated (default 4096; quick 128)")
    p.add_argument("--gen-bytes-uncached", type=int, default=None,
                   help="bytes for the slow uncached runs (default 256; quick 32)")
    p.add_argument("--gen-windows", type=int, nargs="+", default=[72, 576], help="max_seq_len of the generators")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.batch = a.batch or (2 if a.quick else 8)
    a.repeats = a.repeats or (2 if a.quick else 5)
    a.gen_bytes = a.gen_bytes or (128 if a.quick else 4096)
    a.gen_bytes_uncached = a.gen_bytes_uncached or (32 if a.quick else 256)
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    r: dict = {"benchmark": "bench_speed", "command": "python -m benchmarks.bench_speed "
               + " ".join(sys.argv[1:] if argv is None else argv), "machine": machine_info()}
    sections = {"dropout": section_dropout, "arch": section_arch, "generate": section_generate}
    for name in a.sections:
        r[name] = sections[name](a)
    r["summary"] = summary(r)
    write_report("bench_speed", r, markdown(r), a.out)
    return r


if __name__ == "__main__":
    main()
