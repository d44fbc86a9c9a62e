"""Training throughput of the playbook task shapes: ours vs a plain PyTorch reference, plus MFU.

    python -m benchmarks.bench_throughput [--quick] [--tasks A B C] [--seq-len 576] [--batch 4]

For each task shape of playbook phase 2 (A: 8x256 chunked+ACT+reversible+checkpointing, B: 8x128
chunked+reversible+checkpointing, C: 16x256 like A) one training step (forward, next-bit cross-entropy
[+ ponder cost], backward, AdamW step) is timed for these variants, built side by side in one process:

* ``reference fp32``: :mod:`benchmarks.reference_model`, same dims, hand-written attention with a dense
  causal mask, full attention (it has no chunking);
* ``ours plain fp32`` / ``bf16``: BitTransformerLM with the same dims and full causal attention, no
  memory features: the same function as the reference, through the engine's SDPA path;
* ``ours chunked fp32``: plain plus the task's 128-bit causal chunks (what chunking alone buys);
* ``ours task fp32`` / ``bf16``: exactly the task's model flags (chunks, reversible, ACT, checkpointing).

Dropout is 0 everywhere (the reference has none, and dropout > 0 sends CPU SDPA to its math kernel).
The steps are interleaved, warm-up excluded, medians of ``--repeats``; ratios are against the reference
measured in the same run. Sequence length: 576 bits (64 bytes; the model default and a frame multiple)
is the longest that keeps task C affordable on a 2-core CPU while still spanning 4.5 chunks of 128, so
chunking really changes the work (at 144 bits a chunk would cover the whole window). MFU counts useful
FLOPs only (see :mod:`benchmarks.flops`) against the matmul peak measured in the same run and the same
thread count: fp32 runs against the fp32 peak, bf16 runs against the bf16 peak.
Framed vs flat (``--no-arch`` skips it): the default 4-layer model, flat (d_model 128) and framed
(``model.arch='framed'``, the widest d_model within the flat model's parameter count), one training step each
on the same bits, fp32, full causal attention, so bits/s compare at equal parameters and window bytes.
Writes ``<out>/bench_throughput.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import interleaved_times, machine_info, median
from benchmarks.flops import matmul_peak, train_step_flops
from benchmarks.reference_model import ReferenceTransformer
from benchmarks.report import RESULTS, write_report
from bit_transformer.config import ModelConfig
from bit_transformer.factory import build_model
from playbook.phase2 import A_MODEL, B_MODEL, C_MODEL

TASKS = {"A": A_MODEL, "B": B_MODEL, "C": C_MODEL}
MEMORY_FLAGS = ("reversible", "act", "checkpointing")


def task_config(task: str, seq_len: int) -> ModelConfig:
    return ModelConfig(**{**TASKS[task], "max_seq_len": seq_len, "dropout": 0.0, "full_attn_logging": False})


def variant_configs(task_cfg: ModelConfig) -> dict[str, ModelConfig]:
    plain = task_cfg.model_copy(update={"chunk_size": None, "overlap": 0, **dict.fromkeys(MEMORY_FLAGS, False)})
    chunked = plain.model_copy(update={"chunk_size": task_cfg.chunk_size, "overlap": task_cfg.overlap})
    return {"plain": plain, "chunked": chunked, "task": task_cfg}


def make_step(model: torch.nn.Module, bits: torch.Tensor, bf16: bool, ponder_weight: float = 0.0):
    """One training update: forward, next-bit CE (+ ponder), backward, AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = bits[:, :-1], bits[:, 1:]

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            logits, ponder = (out.logits, out.ponder_cost) if hasattr(out, "logits") else (out, None)
            loss = F.cross_entropy(logits.float().reshape(-1, 2), y.reshape(-1))
            if ponder is not None and ponder_weight:
                loss = loss + ponder_weight * ponder.float()
        loss.backward()
        opt.step()

    return step


def build_variants(task_cfg: ModelConfig, bits: torch.Tensor, amp: bool = True) -> dict[str, tuple]:
    """name -> (step fn, config for FLOPs, chunked?, precision)."""
    cfgs = variant_configs(task_cfg)
    torch.manual_seed(0)
    out = {"reference fp32": (make_step(ReferenceTransformer.like(cfgs["plain"]).train(), bits, False),
                              cfgs["plain"], "fp32")}
    for kind, precisions in (("plain", ("fp32", "bf16")), ("chunked", ("fp32",)), ("task", ("fp32", "bf16"))):
        cfg = cfgs[kind]
        for prec in precisions if amp else ("fp32",):
            torch.manual_seed(0)
            model = build_model(cfg).train()
            out[f"ours {kind} {prec}"] = (make_step(model, bits, prec == "bf16", cfg.ponder_weight), cfg, prec)
    return out


def run_task(task: str, a: argparse.Namespace, peaks: dict[str, float]) -> dict:
    cfg = task_config(task, a.seq_len)
    bits = torch.randint(0, 2, (a.batch, a.seq_len + 1), generator=torch.Generator().manual_seed(0))
    variants = build_variants(cfg, bits, amp=not a.no_bf16)
    times = interleaved_times({k: v[0] for k, v in variants.items()}, a.repeats, a.warmup)
    ref = median(times["reference fp32"])
    rows = {}
    for name, (_, vcfg, prec) in variants.items():
        med = median(times[name])
        flops = train_step_flops(vcfg, a.batch, a.seq_len)
        rows[name] = {"median_s": med, "times_s": times[name], "bits_per_s": a.batch * a.seq_len / med,
                      "speedup_vs_reference": ref / med, "useful_flops": flops, "precision": prec,
                      "mfu": flops / med / peaks[prec],
                      "config": vcfg.model_dump(exclude_defaults=True)}
        print(f"task {task} {name:<18} {med * 1e3:8.1f} ms  {rows[name]['bits_per_s']:>9,.0f} bits/s  "
              f"x{ref / med:.2f} vs reference  MFU {rows[name]['mfu']:.1%}", flush=True)
    return {"config": cfg.model_dump(exclude_defaults=True), "params": build_model(cfg).num_parameters(),
            "variants": rows}


def run_arch(a: argparse.Namespace) -> dict:
    """Training bits/s of the flat model vs the framed model at equal parameters and window."""
    from benchmarks.bench_speed import framed_like, timed

    flat = ModelConfig(max_seq_len=a.seq_len, dropout=0.0, full_attn_logging=False)
    cfgs = {"flat": flat, "framed": framed_like(flat)}
    B = a.arch_batch
    bits = torch.randint(0, 2, (B, a.seq_len + 1), generator=torch.Generator().manual_seed(1))
    steps = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        steps[name] = make_step(build_model(cfg).train(), bits, False)
    rows = timed(steps, a.repeats, a.warmup)  # wall and process-CPU medians, interleaved
    for name, cfg in cfgs.items():
        row = rows[name]
        row.update(bits_per_s=B * a.seq_len / row["median_s"], bits_per_cpu_s=B * a.seq_len / row["cpu_median_s"],
                   params=build_model(cfg).num_parameters(), config=cfg.model_dump(exclude_defaults=True))
        print(f"arch {name:<7} {row['params']:>9,} params {row['median_s'] * 1e3:8.1f} ms  "
              f"{row['bits_per_s']:>9,.0f} bits/s ({row['bits_per_cpu_s']:,.0f} per CPU-second)", flush=True)
    return {"rows": rows, "batch": B, "window_bytes": a.seq_len // 9,
            "speedup": rows["flat"]["median_s"] / rows["framed"]["median_s"],
            "cpu_speedup": rows["flat"]["cpu_median_s"] / rows["framed"]["cpu_median_s"]}


def summary(r: dict) -> str:
    def ratios(variant: str) -> str:
        return ", ".join(f"{task} {t['variants'][variant]['speedup_vs_reference']:.2f}x"
                         for task, t in r["tasks"].items() if variant in t["variants"])

    mfu = {prec: max((v["mfu"] for t in r["tasks"].values() for v in t["variants"].values()
                      if v["precision"] == prec), default=0.0) for prec in ("fp32", "bf16")}
    text = (f"training bits/s vs a plain fp32 PyTorch reference (T={r['seq_len']}): as the playbook configures "
            f"the task {ratios('ours task fp32')}; same dims with no memory features {ratios('ours plain fp32')}")
    if any("ours task bf16" in t["variants"] for t in r["tasks"].values()):
        text += f"; task config under bf16 autocast {ratios('ours task bf16')}"
    text += f". Best MFU: fp32 {mfu['fp32']:.0%} of a measured {r['peaks']['fp32'] / 1e9:.0f} GFLOP/s"
    if mfu["bf16"]:
        text += f", bf16 {mfu['bf16']:.0%} of {r['peaks']['bf16'] / 1e9:.0f} GFLOP/s"
    if r.get("arch"):
        rows = r["arch"]["rows"]
        text += (f". Framed vs flat at equal params ({rows['framed']['params']:,} vs {rows['flat']['params']:,}) and "
                 f"{r['arch']['window_bytes']}-byte windows: {rows['framed']['bits_per_s']:,.0f} vs "
                 f"{rows['flat']['bits_per_s']:,.0f} bits/s ({r['arch']['speedup']:.1f}x wall, "
                 f"{r['arch']['cpu_speedup']:.1f}x per CPU-second, batch {r['arch']['batch']})")
    return text


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"Training step (forward+backward+AdamW), batch {r['batch']} x {r['seq_len']} bits, median of "
             f"{r['repeats']} interleaved repeats, {m['cpu']} ({m['torch_threads']} torch threads), torch "
             f"{m['torch']}. Peaks measured in this run: fp32 {r['peaks']['fp32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {r['peaks']['bf16'] / 1e9:.0f} GFLOP/s.", "",
             "| task | variant | ms/step | bits/s | x reference | MFU |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for task, t in r["tasks"].items():
        for name, v in t["variants"].items():
            lines.append(f"| {task} ({t['params'] / 1e6:.1f}M) | {name} | {v['median_s'] * 1e3:.0f} | "
                         f"{v['bits_per_s']:,.0f} | {v['speedup_vs_reference']:.2f} | {v['mfu']:.1%} |")
    if r.get("arch"):
        lines += ["", f"| arch (default 4-layer model, batch {r['arch']['batch']}) | params | ms/step | bits/s | "
                  "bits per CPU-s |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {v['params']:,} | {v['median_s'] * 1e3:.0f} | {v['bits_per_s']:,.0f} | "
                  f"{v['bits_per_cpu_s']:,.0f} |" for k, v in r["arch"]["rows"].items()]
    return "\n".join(lines) + "\n\n" + r["summary"] + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="T=288, batch 2, 2 repeats: a smoke check")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--seq-len", type=int, default=None, help="bits per sequence (default 576; quick 288)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 4; quick 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variants")
    p.add_argument("--no-arch", action="store_true", help="skip the framed vs flat comparison")
    p.add_argument("--arch-batch", type=int, default=16, help="sequences per step in the framed vs flat comparison")
    p.add_argument("--arch-only", action="store_true", help="only the framed vs flat comparison (no tasks)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.seq_len = a.seq_len or (288 if a.quick else 576)
    a.batch = a.batch or (2 if a.quick else 4)
    a.repeats = a.repeats or (2 if a.quick else 5)
    return a


def measure_peaks(quick: bool) -> dict:
    sizes = (512, 1024) if quick else (1024, 2048)
    fp32 = matmul_peak(torch.float32, sizes, 3 if quick else 5)
    bf16 = matmul_peak(torch.bfloat16, sizes, 3 if quick else 5)
    print(f"matmul peak: fp32 {fp32['flops'] / 1e9:.0f} GFLOP/s, bf16 {bf16['flops'] / 1e9:.0f} GFLOP/s", flush=True)
    return {"fp32": fp32["flops"], "bf16": bf16["flops"], "detail": {"fp32": fp32, "bf16": bf16}}


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    peaks = measure_peaks(a.quick)
    tasks = {} if a.arch_only else {t: run_task(t, a, peaks) for t in a.tasks}
    arch = None if a.no_arch else run_arch(a)
    # The peak is re-measured after the runs and the better of the two kept (load drifts on a shared
    # machine); the MFU figures are then recomputed against it, so they are never flattered by a dip.
    again = measure_peaks(a.quick)
    for prec in ("fp32", "bf16"):
        peaks[f"{prec}_runs"] = [peaks[prec], again[prec]]
        peaks[prec] = max(peaks[prec], again[prec])
    for t in tasks.values():
        for v in t["variants"].values():
            v["mfu"] = v["useful_flops"] / v["median_s"] / peaks[v["precision"]]
    r = {"benchmark": "bench_throughput", "command": "python -m benchmarks.bench_throughput "
         + " ".join(sys.argv[1:] if argv is None else argv), "seq_len": a.seq_len, "batch": a.batch,
         "repeats": a.repeats, "warmup": a.warmup, "peaks": peaks, "machine": machine_info(), "tasks": tasks,
         "arch": arch,
         "flop_formula": "3 * (2 * N_matmul * B * T + 4 * d * layers * B * allowed_pairs); recompute not counted"}
    r["summary"] = summary(r)
    write_report("bench_throughput", r, markdown(r), a.out)
    return r


if __name__ == "__main__":
    main()
