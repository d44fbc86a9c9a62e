"""INT4 export vs fp32 and INT8 on held-out text: file size, CPU speed, bits per byte (PTQ and 4-bit QAT).

    .venv/bin/python -m benchmarks.bench_int4 --steps 300

Model: the task B shape of bench_int8 (8 layers x 128, chunk_size 128, reversible, checkpointing, 576-bit windows),
trained twice through the product's Trainer for ``--steps`` updates on Tiny Shakespeare (first 90% of the bytes;
``shared/data`` next to the repository or above it, else ``--data``, else the built-in corpus), same seed and
batches, the product's default optimizer and schedule:
- fp32: plain training. Post-training quantization (PTQ) of it: export_int8, and export_int4 for each of
  ``--group-sizes`` (asymmetric) and the first group size symmetric;
- QAT-4 from scratch: ``train.quantization='int4', train.qat=true`` (per-group fake-quantized weights from the
  first update), then export_int4 with the same group size;
- fine-tune, ``--finetune-steps`` more updates from the fp32 model (``Trainer(model=...)``: fresh optimizer and
  schedule at ``--finetune-lr``, as ``train --init`` does), once in fp32 (then PTQ) and once with QAT-4: the
  usual way QAT is used, compared at equal updates.
Every artifact is loaded back from disk before it is scored (evaluate.evaluate_bits on the first
``--eval-bytes`` validation bytes, all 9 positions, no context) or timed.

Speed, one torch thread, the models interleaved (order alternating), median of ``--repeats``: fp32, INT8 (dynamic,
each of ``--engines``), INT4 with the ``dequant`` backend (float32 weights from the int4 codes) and with the
``kernel`` backend (torch's int4 CPU matmul, bf16 activations); a batch forward (16 x 576 bits) and greedy
generation of ``--gen-bytes`` bytes with the KV cache. Writes ``benchmarks/results/int4.json`` and ``int4.md``.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from benchmarks.bench_int8 import RESULTS, ROOT, bpb, env_info, model_config, time_forward
from benchmarks.common import interleaved_times, median
from benchmarks.report import write_report
from bit_transformer.checkpoint import load_model
from bit_transformer.config import RunConfig
from bit_transformer.data import load_corpus
from bit_transformer.generate import generate
from bit_transformer.quantization import export_int8, load_int8
from bit_transformer.quantization_int4 import export_int4, load_int4
from bit_transformer.training import Trainer

DATA = "shared/data/tinyshakespeare/input.txt"


def default_data() -> Path | None:
    """Tiny Shakespeare in a ``shared/`` folder beside the checkout or further up (worktrees sit deeper)."""
    return next((p / DATA for p in ROOT.parents if (p / DATA).is_file()), None)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="text file (default: shared Tiny Shakespeare, else builtin)")
    p.add_argument("--steps", type=int, default=300, help="training updates of each run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--nhead", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=576)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--finetune-steps", type=int, default=40, help="updates of the fp32 / QAT-4 fine-tunes")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--group-sizes", default="32,64,128", help="INT4 group sizes exported from the fp32 model")
    p.add_argument("--eval-bytes", type=int, default=16384, help="score the first N validation bytes")
    p.add_argument("--engines", default="x86,onednn", help="quantized engines the INT8 model is packed for")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--gen-bytes", type=int, default=32, help="bytes generated per timed generation")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def run_config(a: argparse.Namespace, data: Path | None, **train) -> RunConfig:
    source = {"source": "files", "paths": [str(data)]} if data else {"source": "builtin"}
    return RunConfig.model_validate({
        "model": model_config(a).model_dump(),
        "train": {"batch_size": a.batch_size, "steps": a.steps, "seed": a.seed, "device": "cpu",
                  "eval_every": max(a.steps, 1), "save_every": max(a.steps, 1), **train},
        "data": {**source, "val_fraction": 0.1},
    })


def train(cfg: RunConfig, corpus, run_dir: Path, log: str, model: torch.nn.Module | None = None
          ) -> tuple[torch.nn.Module, dict]:
    """Train with the Trainer (from ``model``'s weights when given, on a copy); (the final checkpoint's model as
    `load_model` gives it, timing)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    start = copy.deepcopy(model) if model is not None else None
    result = Trainer(cfg, run_dir, corpus=corpus, metrics_log=False, model=start).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{log}: training ended without a checkpoint: {result.status} ({result.reason})")
    model, _ = load_model(result.checkpoint)
    info = {"updates": result.updates_done, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1), "status": result.status}
    print(f"[{log}] {info}", flush=True)
    return model, info


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def time_generation(models: dict[str, torch.nn.Module], n_bytes: int, repeats: int) -> dict[str, float]:
    """Median seconds to generate ``n_bytes`` greedily (KV cache), interleaved like ``time_forward``."""
    steps = {k: (lambda m=m: generate(m, "ROMEO:", max_bytes=n_bytes, temperature=0.0, seed=0))
             for k, m in models.items()}
    with torch.inference_mode():
        return {k: median(v) for k, v in interleaved_times(steps, repeats).items()}


def main(argv=None) -> dict:
    a = parse_args(argv)
    torch.set_num_threads(1)
    data = a.data or default_data()
    fp32_cfg = run_config(a, data)
    groups = [int(g) for g in a.group_sizes.split(",")]
    qat_cfg = run_config(a, data, quantization="int4", qat=True, int4_group_size=groups[0])
    a.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = load_corpus(fp32_cfg.data, tmp / "cache")
        val = corpus.val
        fp32, fp32_run = train(fp32_cfg, corpus, tmp / "fp32", "fp32")
        qat, qat_run = train(qat_cfg, corpus, tmp / "qat4", "qat-int4")
        ft = {"steps": a.finetune_steps, "lr": a.finetune_lr}
        if a.finetune_steps:
            tune = {"steps": a.finetune_steps, "lr": a.finetune_lr}
            fp32_ft, ft["fp32_run"] = train(fp32_cfg.model_copy(update={"train": fp32_cfg.train.model_copy(
                update=tune)}), corpus, tmp / "fp32-ft", "fp32 fine-tune", model=fp32)
            qat_ft, ft["qat_run"] = train(qat_cfg.model_copy(update={"train": qat_cfg.train.model_copy(
                update=tune)}), corpus, tmp / "qat4-ft", "qat-int4 fine-tune", model=fp32)
            export_int4(fp32_ft, tmp / "ft-ptq", group_size=groups[0])
            export_int4(qat_ft, tmp / "ft-qat", group_size=groups[0])
            ft.update(fp32_bpb=bpb(fp32_ft, val, a.eval_bytes),
                      ptq_bpb=bpb(load_int4(tmp / "ft-ptq")[0], val, a.eval_bytes),
                      qat_bpb=bpb(load_int4(tmp / "ft-qat")[0], val, a.eval_bytes))
            ft.update({f"{k}_change_pct": 100 * (ft[f"{k}_bpb"] - ft["fp32_bpb"]) / ft["fp32_bpb"]
                       for k in ("ptq", "qat")})
            print(f"fine-tune: {ft}", flush=True)

        safetensors.torch.save_file(fp32.state_dict(), str(tmp / "fp32.safetensors"))
        sizes = {"fp32": (tmp / "fp32.safetensors").stat().st_size}
        export_int8(fp32, tmp / "int8")
        sizes["int8"] = dir_bytes(tmp / "int8")
        variants = [(f"int4 g{g}", g, False) for g in groups] + [(f"int4 g{groups[0]} symmetric", groups[0], True)]
        rows = [{"variant": "fp32", "bytes": sizes["fp32"], "bpb": bpb(fp32, val, a.eval_bytes)},
                {"variant": "int8", "bytes": sizes["int8"], "bpb": bpb(load_int8(tmp / "int8")[0], val,
                                                                       a.eval_bytes)}]
        for name, g, sym in variants:
            path = tmp / name.replace(" ", "-")
            export_int4(fp32, path, group_size=g, symmetric=sym)
            rows.append({"variant": f"{name} (PTQ)", "bytes": dir_bytes(path),
                         "bpb": bpb(load_int4(path)[0], val, a.eval_bytes)})
            print(f"{rows[-1]}", flush=True)
        export_int4(qat, tmp / "qat-int4", group_size=groups[0])
        rows.append({"variant": f"int4 g{groups[0]} (QAT-4)", "bytes": dir_bytes(tmp / "qat-int4"),
                     "bpb": bpb(load_int4(tmp / "qat-int4")[0], val, a.eval_bytes),
                     "fake_quant_bpb": bpb(qat, val, a.eval_bytes)})
        ref = rows[0]["bpb"]
        for r in rows:
            r["size_ratio"] = sizes["fp32"] / r["bytes"]
            r["change_pct"] = 100 * (r["bpb"] - ref) / ref

        supported = torch.backends.quantized.supported_engines
        engines = [e for e in a.engines.split(",") if e in supported] or [torch.backends.quantized.engine]
        int4_dir = tmp / f"int4-g{groups[0]}"
        models = {"fp32": fp32, **{f"int8[{e}]": load_int8(tmp / "int8", engine=e)[0] for e in engines},
                  "int4 dequant": load_int4(int4_dir)[0], "int4 kernel": load_int4(int4_dir, backend="kernel")[0]}
        x = torch.from_numpy(np.asarray(val[: 16 * a.seq_len]).reshape(16, a.seq_len).astype(np.int64))
        fwd = time_forward(models, x, a.repeats)
        gen = time_generation(models, a.gen_bytes, a.repeats)
    speed = {k: {"forward_bits_per_s": x.numel() / fwd[k], "forward_vs_fp32": fwd["fp32"] / fwd[k],
                 "gen_bytes_per_s": a.gen_bytes / gen[k], "gen_vs_fp32": gen["fp32"] / gen[k]} for k in models}
    result = {"model": fp32_cfg.model.model_dump(), "params": fp32.num_parameters(), "data": str(data or "builtin"),
              "eval_bytes": min(a.eval_bytes, len(val) // 9), "steps": a.steps, "batch_size": a.batch_size,
              "training": {"fp32": fp32_run, "qat_int4": qat_run}, "group_size": groups[0], "rows": rows,
              "finetune": ft,
              "speed": speed, "gen_bytes": a.gen_bytes, "repeats": a.repeats, "threads": torch.get_num_threads(),
              "env": env_info()}
    result["summary"] = summary(result)
    write_report("int4", result, markdown(result), a.out)
    return result


def summary(r: dict) -> str:
    rows = {row["variant"]: row for row in r["rows"]}
    g, s, ft = r["group_size"], r["speed"], r["finetune"]
    tuned = (f", after {ft['steps']} more updates PTQ {ft['ptq_change_pct']:+.2f}% vs QAT-4 fine-tune "
             f"{ft['qat_change_pct']:+.2f}%") if "qat_bpb" in ft else ""
    ptq, qat, i8 = rows[f"int4 g{g} (PTQ)"], rows[f"int4 g{g} (QAT-4)"], rows["int8"]
    best8 = max((k for k in s if k.startswith("int8")), key=lambda k: s[k]["forward_vs_fp32"])
    return (f"int4 g{g}: {ptq['size_ratio']:.2f}x smaller than fp32 ({i8['bytes'] / ptq['bytes']:.2f}x vs int8); "
            f"bits/byte vs fp32 {ptq['change_pct']:+.2f}% PTQ, {qat['change_pct']:+.2f}% QAT-4 from scratch (int8 "
            f"{i8['change_pct']:+.2f}%; {rows['fp32']['bpb']:.2f} fp32 after {r['steps']} updates){tuned}; "
            f"batch forward vs fp32: int4 dequant {s['int4 dequant']['forward_vs_fp32']:.2f}x, kernel "
            f"{s['int4 kernel']['forward_vs_fp32']:.2f}x, {best8} {s[best8]['forward_vs_fp32']:.2f}x; generation: "
            f"int4 dequant {s['int4 dequant']['gen_vs_fp32']:.2f}x, kernel {s['int4 kernel']['gen_vs_fp32']:.2f}x")


def markdown(r: dict) -> str:
    m, env = r["model"], r["env"]
    lines = [
        f"INT4 vs INT8 vs fp32: {m['layers']}x{m['d_model']} ({r['params']:,} params, chunk_size {m['chunk_size']}), "
        f"{r['steps']} updates of {r['batch_size']} x {m['max_seq_len']} bits each run, {env['cpu']} "
        f"({env['cpu_count']} CPUs, load {env['load_avg']}), torch {env['torch']}, {r['threads']} thread",
        "",
        f"| variant | file bytes | smaller than fp32 | bits per byte ({r['eval_bytes']:,} val bytes) | change |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        fq = f" (fake-quant float {row['fake_quant_bpb']:.4f})" if "fake_quant_bpb" in row else ""
        lines.append(f"| {row['variant']} | {row['bytes']:,} | {row['size_ratio']:.2f}x | {row['bpb']:.4f}{fq} | "
                     f"{row['change_pct']:+.2f}% |")
    ft = r["finetune"]
    if "qat_bpb" in ft:
        lines += ["", f"Fine-tune: {ft['steps']} more updates from the fp32 model (lr {ft['lr']}), group size "
                  f"{r['group_size']}", "", "| variant | bits per byte | change vs its fp32 |", "| --- | ---: | ---: |",
                  f"| fp32 fine-tune | {ft['fp32_bpb']:.4f} | - |",
                  f"| int4 PTQ of it | {ft['ptq_bpb']:.4f} | {ft['ptq_change_pct']:+.2f}% |",
                  f"| int4 of the QAT-4 fine-tune | {ft['qat_bpb']:.4f} | {ft['qat_change_pct']:+.2f}% |"]
    lines += ["", f"| model | batch forward 16x{m['max_seq_len']} (bits/s) | vs fp32 | generation, {r['gen_bytes']} "
              "bytes (bytes/s) | vs fp32 |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, s in r["speed"].items():
        lines.append(f"| {name} | {s['forward_bits_per_s']:,.0f} | {s['forward_vs_fp32']:.2f}x | "
                     f"{s['gen_bytes_per_s']:.1f} | {s['gen_vs_fp32']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
