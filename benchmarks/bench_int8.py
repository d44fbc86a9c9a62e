"""INT8 export vs fp32 on held-out text: file size, CPU forward throughput, bits per byte.

    .venv/bin/python -m benchmarks.bench_int8 --steps 600            # trains the model first (GPU if any)
    .venv/bin/python -m benchmarks.bench_int8 --init benchmarks/results/int8_fp32.safetensors

Model: the playbook's task B shape (8 layers x 128, 8 heads, causal, chunk_size 128, reversible,
checkpointing, 576-bit windows), trained for ``--steps`` updates on Tiny Shakespeare (first 90% of the
bytes; ``../shared/data`` when present, else ``--data``, else the built-in corpus) so its bits per byte
mean something. ``--init`` skips training (a safetensors state dict this script saved before).

Measured on CPU, fp32 and the INT8 model loaded back from its artifact, side by side in one process:
- size: the fp32 state dict as safetensors vs the INT8 artifact directory (weights + config JSON);
- forward throughput (bits/s) on a batch (16 x 576) and a single sequence (1 x 576), ``torch.inference_mode``,
  fp32 and the INT8 model packed for each of ``--engines`` interleaved, median of ``--repeats``, for each
  ``--threads`` setting; plus timing-only rows for the same weights with full (fused-kernel) attention and for
  ``--timing-shapes`` models, and the share of the fp32 forward spent in linear layers (profiler): INT8 only
  speeds those up, so 1 / (1 - share) bounds the possible speed-up;
- bits per byte (evaluate.evaluate_bits, all 9 positions) on the first ``--eval-bytes`` of the validation
  split, for the INT8 model and for int8 weights with float activations (where the error comes from).
Writes ``benchmarks/results/int8.json`` and ``int8.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F

from benchmarks.report import write_report
from bit_transformer.bits import bytes_to_bits
from bit_transformer.config import FRAME_BITS, ModelConfig
from bit_transformer.evaluate import evaluate_bits
from bit_transformer.factory import build_model
from bit_transformer.model import BitTransformerLM
from bit_transformer.quantization import convert_qat, export_int8, load_int8, prepare_qat, quantize_int8

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


# ---------------------------------------------------------------------------------------- shared helpers
def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="text file (default: shared Tiny Shakespeare, else builtin)")
    p.add_argument("--steps", type=int, default=600, help="training updates")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--nhead", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=576)
    p.add_argument("--dropout", type=float, default=0.0, help="short runs do not overfit; task B leaves it default")
    p.add_argument("--device", default="auto", help="training device: auto (cuda if available), cpu, cuda")
    p.add_argument("--eval-bytes", type=int, default=32768, help="score the first N validation bytes")
    p.add_argument("--seed", type=int, default=0)


def load_text(path: Path | None) -> tuple[bytes, bytes, str]:
    """(train bytes, validation bytes, source): the last 10% of the bytes validate."""
    if path is None and SHARED.is_file():
        path = SHARED
    if path is not None:
        data, source = path.read_bytes(), str(path)
    else:
        from bit_transformer.data import builtin_text

        data, source = builtin_text().encode("utf-8"), "builtin"
    cut = len(data) - len(data) // 10
    return data[:cut], data[cut:], source


def model_config(a: argparse.Namespace) -> ModelConfig:
    return ModelConfig(layers=a.layers, d_model=a.d_model, nhead=a.nhead, chunk_size=a.chunk_size,
                       max_seq_len=a.seq_len, reversible=True, checkpointing=True, dropout=a.dropout,
                       full_attn_logging=False)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def lr_at(step: int, total: int, peak: float) -> float:
    """Linear warmup over 5% of the updates, then cosine down to 10% of the peak."""
    warm = max(1, total // 20)
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * t)))


def batch_at(bits: np.ndarray, step: int, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    """Frame-aligned windows of seq_len + 1 bits; a function of (seed, step) so runs can branch and agree."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, (bits.size - seq_len - 1) // FRAME_BITS, size=batch) * FRAME_BITS
    return torch.from_numpy(bits[starts[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int64))


def train(model: BitTransformerLM, bits: np.ndarray, *, start: int, stop: int, total: int, a: argparse.Namespace,
          opt: torch.optim.Optimizer, device: torch.device, log: str = "") -> list[float]:
    """Updates start..stop-1 of a `total`-update cosine schedule; returns the losses."""
    model.train()
    amp = device.type == "cuda"
    losses = []
    for step in range(start, stop):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, a.lr)
        w = batch_at(bits, step, a.batch_size, a.seq_len, a.seed).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(w[:, :-1])
        loss = F.cross_entropy(out.logits.float().reshape(-1, 2), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step % 100 == 0 or step == stop - 1):
            print(f"[{log}] step {step} loss {loss.item():.4f} ({loss.item() * 9 / math.log(2):.3f} bpb)", flush=True)
    return losses


def new_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))


def bpb(model: torch.nn.Module, val_bits: np.ndarray, eval_bytes: int) -> float:
    with torch.inference_mode():
        report = evaluate_bits(model, val_bits, max_bytes=eval_bytes, batch_size=16, telemetry=False,
                               compressors=False)
    return report.bits_per_byte


def cpu_copy(model: BitTransformerLM) -> BitTransformerLM:
    out = build_model(model.cfg)
    out.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    return out.eval()


def env_info() -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"torch": torch.__version__, "cpu": cpu, "cpu_count": os.cpu_count(), "load_avg": load,
            "engine": torch.backends.quantized.engine, "cuda": torch.cuda.get_device_name(0)
            if torch.cuda.is_available() else None}


# ---------------------------------------------------------------------------------------- timing
def time_forward(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per forward; models interleaved (order alternating) so load drift hits both alike."""
    times: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    with torch.inference_mode():
        for m in models.values():
            m(x)
            m(x)
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                models[name](x)
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


LINEAR_OPS = {"aten::addmm", "aten::mm", "quantized::linear_dynamic"}


def linear_share(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of a forward's CPU op time spent in the linear layers (profiler self time): the Amdahl limit."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in LINEAR_OPS) / max(total, 1e-9)


def get_model(a: argparse.Namespace, train_bits: np.ndarray) -> tuple[BitTransformerLM, dict]:
    cfg = model_config(a)
    if a.init is not None:
        model = build_model(cfg)
        model.load_state_dict(safetensors.torch.load_file(str(a.init)))
        return model.eval(), {"init": str(a.init)}
    device = resolve_device(a.device)
    torch.manual_seed(a.seed)
    model = build_model(cfg).to(device)
    t0 = time.perf_counter()
    losses = train(model, train_bits, start=0, stop=a.steps, total=a.steps, a=a, opt=new_optimizer(model, a.lr),
                   device=device, log="fp32")
    return cpu_copy(model), {"steps": a.steps, "train_s": round(time.perf_counter() - t0, 1), "device": str(device),
                             "final_train_loss": float(np.mean(losses[-20:]))}


def full_attention(model: BitTransformerLM) -> BitTransformerLM:
    """The same weights with chunk_size=None (SDPA's fused causal kernel): timing only, a different function."""
    out = build_model(model.cfg.model_copy(update={"chunk_size": None}))
    out.load_state_dict(model.state_dict())
    return out.eval()


def time_all(a, model: BitTransformerLM, artifact: Path, val_bits: np.ndarray, engines: list[str]) -> list[dict]:
    """Rows of (threads, variant, shape): fp32 and the INT8 model packed for each engine, interleaved."""
    variants = [("as configured", model, None)]
    if model.cfg.chunk_size is not None:
        variants.append(("full attention (fused SDPA), timing only", full_attention(model), None))
    for spec in filter(None, a.timing_shapes.split(",")):  # wider/deeper models: where do linears dominate?
        layers, width = (int(v) for v in spec.split("x"))
        with torch.random.fork_rng(devices=[]):
            wide = build_model(model.cfg.model_copy(update={"layers": layers, "d_model": width}))
        variants.append((f"{layers}x{width} untrained, timing only", wide.eval(), None))
    int8 = {}
    for name, fp, _ in variants:
        int8[name] = {e: load_int8(artifact, engine=e)[0] if fp is model else quantize_int8(fp, engine=e)
                      for e in engines}
    default_threads, rows = torch.get_num_threads(), []
    for t in [int(v) for v in a.threads.split(",")]:
        torch.set_num_threads(t or default_threads)
        for name, fp, _ in variants:
            models = {"fp32": fp, **{f"int8[{e}]": m for e, m in int8[name].items()}}
            xb = torch.from_numpy(val_bits[: 16 * a.seq_len].reshape(16, a.seq_len).astype(np.int64))
            shares = {k: linear_share(m, xb) for k, m in models.items()}
            for shape in ((16, a.seq_len), (1, a.seq_len)):
                x = torch.from_numpy(val_bits[: shape[0] * shape[1]].reshape(shape).astype(np.int64))
                med = time_forward(models, x, a.repeats)
                rows.append({"threads": torch.get_num_threads(), "variant": name, "shape": list(shape),
                             "bits_per_s": {k: x.numel() / v for k, v in med.items()},
                             "speedup": {k: med["fp32"] / v for k, v in med.items() if k != "fp32"},
                             "linear_share": shares})
                best = max(rows[-1]["speedup"].values())
                print(f"threads {rows[-1]['threads']} {name} {shape}: best int8 x{best:.2f}", flush=True)
    torch.set_num_threads(default_threads)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--init", type=Path, default=None, help="fp32 safetensors state dict: skip training")
    p.add_argument("--threads", default="0", help="comma list of torch thread counts; 0 = torch's default")
    p.add_argument("--engines", default="x86,onednn", help="quantized engines to pack the INT8 model for")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--timing-shapes", default="16x256", help="extra LAYERSxWIDTH models timed (random weights)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    train_text, val_text, source = load_text(a.data)
    train_bits, val_bits = bytes_to_bits(train_text), bytes_to_bits(val_text)
    model, training = get_model(a, train_bits)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.init is None:
        safetensors.torch.save_file(model.state_dict(), str(a.out / "int8_fp32.safetensors"))
    supported = torch.backends.quantized.supported_engines
    engines = [e for e in a.engines.split(",") if e in supported] or [torch.backends.quantized.engine]

    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = Path(tmp) / "model.safetensors"
        safetensors.torch.save_file(model.state_dict(), str(fp32_file))
        fp32_bytes = fp32_file.stat().st_size
        info = export_int8(model, Path(tmp) / "int8")
        int8, _ = load_int8(Path(tmp) / "int8")  # what a deployment loads, not the in-memory copy
        speed = time_all(a, model, Path(tmp) / "int8", val_bits, engines)

    b32, b8 = bpb(model, val_bits, a.eval_bytes), bpb(int8, val_bits, a.eval_bytes)
    # Where the error comes from: the same int8 weights with float activations (no dynamic input rounding).
    weights_only = convert_qat(prepare_qat(copy.deepcopy(model), activations=False))
    bw = bpb(weights_only, val_bits, a.eval_bytes)
    result = {
        "model": model.cfg.model_dump(), "params": model.num_parameters(), "data": source,
        "eval_bytes": min(a.eval_bytes, len(val_text)), "training": training, "env": env_info(),
        "size": {"fp32_bytes": fp32_bytes, "int8_bytes": info.artifact_bytes,
                 "ratio": fp32_bytes / info.artifact_bytes},
        "speed": speed, "engines": engines,
        "bpb": {"fp32": b32, "int8": b8, "change_pct": 100 * (b8 - b32) / b32, "int8_weights_only": bw,
                "weights_only_change_pct": 100 * (bw - b32) / b32},
        "int8_backend": getattr(int8, "int8_backend", None),
    }
    result["summary"] = summary(result)
    write_report("int8", result, markdown(result), a.out)
    return result


def summary(r: dict) -> str:
    """One line for the suite table: size, bits-per-byte change and the batch forward speed-up."""
    rows = [row for row in r["speed"] if row["variant"] == "as configured" and row["shape"][0] > 1]
    speed = ", ".join(f"{e} {x:.2f}x" for e, x in rows[-1]["speedup"].items()) if rows else "not timed"
    steps = r["training"].get("steps", "?")
    return (f"{r['size']['ratio']:.2f}x smaller, bits/byte {r['bpb']['change_pct']:+.2f}% "
            f"({r['bpb']['fp32']:.2f} -> {r['bpb']['int8']:.2f} after {steps} updates), "
            f"batch forward vs fp32: {speed}")


def markdown(r: dict) -> str:
    s, b, env = r["size"], r["bpb"], r["env"]
    lines = [
        f"INT8 vs fp32: {r['model']['layers']}x{r['model']['d_model']} ({r['params']:,} params, chunk_size "
        f"{r['model']['chunk_size']}), {env['cpu']} ({env['cpu_count']} CPUs, load {env['load_avg']}), "
        f"torch {env['torch']}, backend {r['int8_backend']}",
        "",
        "| metric | fp32 | int8 | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| file size (bytes) | {s['fp32_bytes']:,} | {s['int8_bytes']:,} | {s['ratio']:.2f}x smaller | >= 3.5x |",
        f"| bits per byte ({r['eval_bytes']:,} val bytes) | {b['fp32']:.4f} | {b['int8']:.4f} | "
        f"{b['change_pct']:+.2f}% | within 2% |",
        f"| ... int8 weights only, float activations | {b['fp32']:.4f} | {b['int8_weights_only']:.4f} | "
        f"{b['weights_only_change_pct']:+.2f}% | - |",
        "",
        "| forward (bits/s, median) | threads | fp32 | " + " | ".join(f"int8 {e}" for e in r["engines"])
        + " | linear share fp32 / int8 | target |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in r["engines"]) + " | ---: | --- |",
    ]
    for row in r["speed"]:
        bps, sp, share = row["bits_per_s"], row["speedup"], row["linear_share"]
        int8_cells = " | ".join(f"{bps[f'int8[{e}]']:,.0f} ({sp[f'int8[{e}]']:.2f}x)" for e in r["engines"])
        best_share = min((share[f"int8[{e}]"] for e in r["engines"]), default=0.0)
        batch = row["shape"][0] > 1
        lines.append(f"| {row['shape'][0]}x{row['shape'][1]}, {row['variant']} | {row['threads']} | "
                     f"{bps['fp32']:,.0f} | {int8_cells} | {share['fp32']:.0%} / {best_share:.0%} | "
                     f"{'>= 2x' if batch and row['variant'] == 'as configured' else '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
