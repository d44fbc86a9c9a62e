"""QAT vs post-training quantization on the same training budget: bits-per-byte gap to fp32.

    .venv/bin/python -m benchmarks.bench_qat --steps 600

Same model, data, seed and batches as bench_int8 (task B shape). Runs, all with ``--steps`` updates:
- fp32: plain training; its bits per byte is the reference. PTQ = export_int8 of this model.
- QAT fine-tune: the fp32 run's state at ``--qat-from`` (default 80%) of the budget, then prepare_qat and the
  remaining updates on the same batches and schedule (same optimizer: prepare_qat keeps the parameters).
- QAT from scratch: prepare_qat before the first update.
Each QAT model is exported with export_int8 and loaded back; all bits per byte are measured on CPU with
evaluate.evaluate_bits on the same validation bytes. Writes ``benchmarks/results/qat.json`` and ``qat.md``;
also saves the fp32 model to ``int8_fp32.safetensors`` there so bench_int8 can reuse it (``--init``).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

from benchmarks.bench_int8 import (
    RESULTS,
    add_common_args,
    bpb,
    cpu_copy,
    env_info,
    load_text,
    model_config,
    new_optimizer,
    resolve_device,
    train,
)
from benchmarks.report import write_report
from bit_transformer.bits import bytes_to_bits
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM
from bit_transformer.quantization import convert_qat, export_int8, load_int8, prepare_qat


def int8_bpb(model: BitTransformerLM, val_bits, eval_bytes: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        export_int8(model, Path(tmp) / "a")
        int8, _ = load_int8(Path(tmp) / "a")
    return bpb(int8, val_bits, eval_bytes)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--qat-from", type=float, default=0.8, help="share of the budget trained in fp32 before QAT")
    p.add_argument("--no-scratch", action="store_true", help="skip the QAT-from-scratch run")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    train_text, val_text, source = load_text(a.data)
    train_bits, val_bits = bytes_to_bits(train_text), bytes_to_bits(val_text)
    device, cfg, n = resolve_device(a.device), model_config(a), a.steps
    branch = round(n * a.qat_from)
    timings = {}

    torch.manual_seed(a.seed)
    fp32 = build_model(cfg).to(device)
    opt = new_optimizer(fp32, a.lr)
    t0 = time.perf_counter()
    train(fp32, train_bits, start=0, stop=branch, total=n, a=a, opt=opt, device=device, log="fp32")
    snap = copy.deepcopy(fp32.state_dict()), copy.deepcopy(opt.state_dict())
    train(fp32, train_bits, start=branch, stop=n, total=n, a=a, opt=opt, device=device, log="fp32")
    timings["fp32_s"] = time.perf_counter() - t0

    ft = build_model(cfg).to(device)
    ft.load_state_dict(snap[0])
    prepare_qat(ft)  # same Parameter objects: the optimizer state carries over
    ft_opt = new_optimizer(ft, a.lr)
    ft_opt.load_state_dict(snap[1])
    t0 = time.perf_counter()
    train(ft, train_bits, start=branch, stop=n, total=n, a=a, opt=ft_opt, device=device, log="qat-ft")
    timings["qat_finetune_s"] = time.perf_counter() - t0

    runs = {"fine-tune": ft}
    if not a.no_scratch:
        torch.manual_seed(a.seed)
        scratch = prepare_qat(build_model(cfg).to(device))
        t0 = time.perf_counter()
        train(scratch, train_bits, start=0, stop=n, total=n, a=a, opt=new_optimizer(scratch, a.lr), device=device,
              log="qat-scratch")
        timings["qat_scratch_s"] = time.perf_counter() - t0
        runs["scratch"] = scratch

    a.out.mkdir(parents=True, exist_ok=True)
    fp32_cpu = cpu_copy(fp32)
    safetensors.torch.save_file(fp32_cpu.state_dict(), str(a.out / "int8_fp32.safetensors"))
    ref = bpb(fp32_cpu, val_bits, a.eval_bytes)
    rows = [{"variant": "fp32 (reference)", "float_bpb": ref, "int8_bpb": None},
            {"variant": "post-training quantization", "float_bpb": ref, "int8_bpb": int8_bpb(fp32_cpu, val_bits,
                                                                                           a.eval_bytes)}]
    for name, m in runs.items():
        cpu = prepare_qat(cpu_copy(m))  # fake-quantized float model, on CPU for the same engine's act levels
        rows.append({"variant": f"QAT {name}" + (f" (last {n - branch} updates)" if name == "fine-tune" else ""),
                     "float_bpb": bpb(cpu, val_bits, a.eval_bytes), "int8_bpb": int8_bpb(cpu, val_bits, a.eval_bytes),
                     "converted_bpb": bpb(convert_qat(cpu), val_bits, a.eval_bytes)})
    for r in rows:
        r["gap_pct"] = None if r["int8_bpb"] is None else 100 * (r["int8_bpb"] - ref) / ref
    result = {"model": cfg.model_dump(), "steps": n, "qat_from_step": branch, "batch_size": a.batch_size,
              "data": source, "eval_bytes": min(a.eval_bytes, len(val_text)), "device": str(device),
              "timings_s": {k: round(v, 1) for k, v in timings.items()}, "env": env_info(), "rows": rows}
    result["summary"] = "bits/byte gap of int8 to fp32: " + ", ".join(
        f"{r['variant']} {r['gap_pct']:+.3f}%" for r in rows if r["gap_pct"] is not None) + f" ({n} updates)"
    write_report("qat", result, markdown(result), a.out)
    return result


def markdown(r: dict) -> str:
    lines = [
        f"QAT vs PTQ: {r['model']['layers']}x{r['model']['d_model']}, {r['steps']} updates of {r['batch_size']} x "
        f"{r['model']['max_seq_len']} bits on {Path(r['data']).name}, bits per byte on {r['eval_bytes']:,} val bytes",
        "",
        "| variant | float bpb (fake-quant for QAT) | int8 bpb | int8 gap to fp32 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        i8 = "-" if row["int8_bpb"] is None else f"{row['int8_bpb']:.4f}"
        gap = "-" if row["gap_pct"] is None else f"{row['gap_pct']:+.2f}%"
        lines.append(f"| {row['variant']} | {row['float_bpb']:.4f} | {i8} | {gap} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
