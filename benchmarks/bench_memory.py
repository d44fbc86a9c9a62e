"""Peak training memory and step time: standard vs checkpointing vs reversible vs reversible+ACT.

Each (configuration, depth) runs in a fresh subprocess: build the model, one warm-up step, then measure
peak memory over the timed forward+backward steps (no optimizer: the step is forward, loss, backward).

* CUDA: ``torch.cuda.max_memory_allocated`` above ``memory_allocated`` after the warm-up (parameters,
  the input and cached workspaces are the baseline; gradients are freed before the baseline is read).
* CPU: peak RSS above the RSS after the warm-up: the kernel's high-water mark (VmHWM) is reset through
  /proc/self/clear_refs, and glibc is told to serve every allocation >= 128 KiB with mmap
  (MALLOC_MMAP_THRESHOLD_) so that freed tensors leave RSS and the peak tracks live memory.

CPU note: with dropout > 0, PyTorch's CPU SDPA falls back to the math kernel, which stores T x T
attention weights per layer (about 25 GB for 32 standard layers here), so on CPU the default dropout
is 0 (the fused flash kernel); CUDA uses the model default 0.1 (its fused kernels support dropout).

    python benchmarks/bench_memory.py                 # CPU, depths 4 8 16 32 (slow on CPU)
    python benchmarks/bench_memory.py --device cuda   # GPU
    python benchmarks/bench_memory.py --quick         # depths 4 and 16, one timed step

Writes benchmarks/results/memory.json and prints peak memory and step time with ratios vs standard.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "standard": {},
    "checkpointing": {"checkpointing": True},
    "reversible": {"reversible": True},
    "reversible+act": {"reversible": True, "act": True},
}
MB = 2**20


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def worker(job: dict) -> dict:
    """Runs inside the fresh subprocess."""
    import gc

    import torch
    import torch.nn.functional as F

    from bit_transformer import ModelConfig
    from bit_transformer.factory import build_model

    device = torch.device(job["device"])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    cfg = ModelConfig(layers=job["depth"], d_model=job["d_model"], nhead=job["nhead"], max_seq_len=job["seq"],
                      dropout=job["dropout"], **CONFIGS[job["config"]])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    bits = torch.randint(0, 2, (job["batch"], job["seq"]), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=job["amp"] == "bf16")
    cuda = device.type == "cuda"

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with amp:
            out = model(bits)
            logits = out.logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, 2), bits[:, 1:].reshape(-1))
            loss = loss + cfg.ponder_weight * out.ponder_cost
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=True)
        return dt

    warm = step()
    gc.collect()
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        reset = True
    else:
        base = _proc_status("VmRSS")
        reset = _reset_peak_rss()
    times = [step() for _ in range(job["steps"])]
    peak = (torch.cuda.max_memory_allocated() if cuda else _proc_status("VmHWM")) - base
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {**job, "peak_mb": peak / MB, "param_mb": params / MB, "step_s": statistics.median(times),
            "warmup_s": warm, "peak_reset": reset, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
            "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def run_job(job: dict, timeout: float) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {**job, "error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {**job, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def table(results: list[dict]) -> str:
    std = {r["depth"]: r for r in results if r["config"] == "standard" and "error" not in r}
    lines = ["| depth | config | peak MB | x standard | step s | x standard |", "|---:|---|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['depth']} | {r['config']} | error: {r['error'][:60]} | | | |")
            continue
        s = std.get(r["depth"])
        mem_ratio = f"{r['peak_mb'] / s['peak_mb']:.2f}" if s else "-"
        time_ratio = f"{r['step_s'] / s['step_s']:.2f}" if s else "-"
        lines.append(f"| {r['depth']} | {r['config']} | {r['peak_mb']:.0f} | {mem_ratio} | {r['step_s']:.3f} | "
                     f"{time_ratio} |")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """One line for the suite table: memory and time vs standard at the deepest depth measured."""
    ok = [r for r in results if "error" not in r]
    failed = len(results) - len(ok)
    if not ok:
        return f"all {failed} configurations failed"
    depth = max(r["depth"] for r in ok)
    at = {r["config"]: r for r in ok if r["depth"] == depth}
    std = at.get("standard")
    if std is None:
        return f"no standard run at depth {depth}"
    parts = [f"{name} {r['peak_mb'] / std['peak_mb']:.2f}x memory / {r['step_s'] / std['step_s']:.2f}x time"
             for name, r in at.items() if name != "standard"]
    first = ok[0]
    return (f"peak training memory vs standard at {depth} layers (d {first['d_model']}, {first['batch']}x"
            f"{first['seq']} bits, {first['device']}): " + ", ".join(parts)
            + (f"; {failed} configurations failed" if failed else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="depths 4 and 16, one timed step")
    ap.add_argument("--depths", type=int, nargs="+", default=None)
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--nhead", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024, help="sequence length in bits")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=None, help="default: 0.1 on cuda, 0.0 on cpu (see above)")
    ap.add_argument("--amp", choices=["none", "bf16"], default="none")
    ap.add_argument("--steps", type=int, default=None, help="timed steps after the warm-up (cpu 1, cuda 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each worker (0: torch's default)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per configuration")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    depths = args.depths or ([4, 16] if args.quick else [4, 8, 16, 32])
    cuda = args.device == "cuda"
    steps = args.steps or (1 if args.quick or not cuda else 3)
    dropout = args.dropout if args.dropout is not None else (0.1 if cuda else 0.0)
    results = []
    for depth in depths:
        for name in args.configs:
            job = dict(config=name, depth=depth, d_model=args.d_model, nhead=args.nhead, seq=args.seq,
                       batch=args.batch, dropout=dropout, amp=args.amp, device=args.device, steps=steps,
                       threads=args.threads)
            r = run_job(job, args.timeout)
            results.append(r)
            msg = r.get("error") or f"peak {r['peak_mb']:.0f} MB, step {r['step_s']:.3f} s"
            print(f"depth {depth:>3} {name:<15} {msg}", flush=True)
    print()
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "device": args.device,
            "dropout": dropout, "amp": args.amp, "steps": steps, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.write_text(json.dumps({"meta": meta, "results": results, "summary": summary(results)}, indent=2))
    args.out.with_suffix(".md").write_text(table(results) + "\n\n" + summary(results) + "\n")
    print(f"\nwrote {args.out}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
