"""The best CPU recipe through the product's CLI: an ablation (each change off, 2 seeds) and the headline.

    python -m benchmarks.bench_recipe                     # ablation at 5 CPU-min x 2 seeds + the 15-min headline
    python -m benchmarks.bench_recipe --headline none     # the ablation only
    python -m benchmarks.bench_recipe --variants best --budget 15m --seeds 0 --headline none

Every run is exactly what a user types (the markdown lists the commands):

    bit-transformer --threads 1 train --data <tinyshakespeare> <recipe flags> --time_budget 5m \\
        --budget_clock cpu --seed S --out <dir> --quiet --json
    bit-transformer evaluate --checkpoint <dir> --split val --context_bits <3/4 window> --json

``train`` stops at the budget of process CPU time (one torch thread, so a shared machine slows the wall
clock, not the figure), its LR schedule planned to anneal there; ``evaluate`` scores the whole validation
split of the checkpoint's own corpus config (``data.val_fraction`` 0.1: the last 111,540 bytes of Tiny
Shakespeare), each window seeing 3/4 of its length as context, like ``bench_quality``. Variants run
``--jobs`` at a time (default 2, one per core). Deltas are paired: a variant's run minus the best recipe's
run with the same seed. Writes ``<out>/bench_recipe.{json,md}`` and the run directories under
``<out>/recipe_runs/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from benchmarks.bench_quality import DEFAULT_DATA  # the shared data folder next to the repository
from benchmarks.common import ROOT, load_avg, machine_info
from benchmarks.report import RESULTS, write_report
from bit_transformer.checkpoint import resolve_checkpoint
from bit_transformer.config import FRAME_BITS
from bit_transformer.evaluate import EvalReport
from bit_transformer.records import TrainResult

TARGETS = {"5m": 2.30, "15m": 2.12}  # issue 22: Tiny Shakespeare validation, whole split, one thread

# The best measured recipe (docs/benchmarks.md, "Best recipe through the CLI"); flags as the CLI spells them.
RECIPE: dict[str, str] = {
    "arch": "framed", "block": "modern", "layers": "4", "d_model": "128", "nhead": "4", "max_seq_len": "288",
    "batch_size": "16", "optimizer": "muon", "lr": "3e-3", "lr_schedule": "wsd", "warmup_frac": "0.05",
    "ema_decay": "0.999", "dropout": "0", "amp": "none", "eval_every": "1000",
}


@dataclass(frozen=True)
class Variant:
    name: str
    change: str  # what differs from the best recipe, in words
    flags: dict[str, str]  # overrides of RECIPE

    def config(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The train flags of this variant (``extra``: flags set for every run, e.g. by a smoke test)."""
        return {**RECIPE, **self.flags, **(extra or {})}


VARIANTS: list[Variant] = [  # in order of interest: a run stopped early has the first ones
    Variant("best", "the recipe", {}),
    Variant("classic", "classic block (LayerNorm, learned positions, GELU, biases)", {"block": "classic"}),
    Variant("adamw", "AdamW for every parameter instead of Muon", {"optimizer": "adamw"}),
    Variant("cosine", "cosine schedule instead of warm-up/stable/decay", {"lr_schedule": "cosine"}),
    Variant("no-ema", "no EMA of the weights", {"ema_decay": "none"}),
    Variant("ctx64", "64-byte windows, batch 8 (the same bytes per update)", {"max_seq_len": "576", "batch_size": "8"}),
    Variant("flat", "flat (one position per bit) instead of framed", {"arch": "flat"}),
    Variant("dropout", "dropout 0.1", {"dropout": "0.1"}),
    Variant("bf16", "bf16 autocast instead of fp32", {"amp": "bf16"}),
]


def bit_transformer(*args: str) -> list[str]:
    """The CLI, run with this interpreter (``bit-transformer`` is ``python -m bit_transformer``)."""
    return [sys.executable, "-m", "bit_transformer", *args]


def shown(argv: list[str]) -> str:
    return " ".join(["bit-transformer", *(shlex.quote(a) for a in argv[3:])])


def context_bits(seq_len: int) -> int:
    return (seq_len * 3 // 4) // FRAME_BITS * FRAME_BITS


def budget_spent(run_dir: Path) -> float | None:
    """Training seconds the run's final checkpoint counted against its time budget (None without a budget)."""
    meta = json.loads((resolve_checkpoint(run_dir) / "meta.json").read_text())
    spent = meta.get("state", {}).get("budget_s")
    return round(spent, 1) if spent else None


def run_variant(v: Variant, seed: int, budget: str | None, a: argparse.Namespace, label: str,
                runs: str = "recipe_runs") -> dict:
    """Train one variant through the CLI (run dir ``<out>/<runs>/<label>_s<seed>``) and score it; returns its row."""
    run_dir = a.out / runs / f"{label}_s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    stop = ["--time_budget", budget, "--budget_clock", "cpu"] if budget else ["--steps", str(a.steps)]
    flags = v.config(a.set)
    train = bit_transformer("--threads", "1", "train", "--data", *a.data,
                            *(x for k, value in flags.items() for x in (f"--{k}", value)), *stop,
                            "--seed", str(seed), "--out", str(run_dir), "--quiet", "--json")
    evaluate = bit_transformer("--threads", "1", "evaluate", "--checkpoint", str(run_dir), "--split", "val",
                               "--context_bits", str(context_bits(int(flags["max_seq_len"]))), "--batch_size", "64",
                               "--json",
                               *(["--max_bytes", str(a.eval_max_bytes)] if a.eval_max_bytes else []),
                               *([] if label == "headline" else ["--no_compressors"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    row = {"variant": v.name, "label": label, "change": v.change, "seed": seed, "budget": budget,
           "train_command": shown(train), "eval_command": shown(evaluate)}
    t0 = time.perf_counter()
    print(f"[{label} s{seed}] start: {row['train_command']}", flush=True)
    with open(run_dir / "train.log", "w") as log:
        done = subprocess.run(train, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    row["train_wall_s"] = round(time.perf_counter() - t0, 1)
    if done.returncode != 0:
        tail = (run_dir / "train.log").read_text().strip().splitlines()[-3:]
        return {**row, "error": f"train exit {done.returncode}: " + " | ".join(tail)[-400:]}
    result = TrainResult.model_validate_json(done.stdout)
    row.update(status=result.status, updates=result.updates_done, params=result.plan.params,
               budget_used_s=budget_spent(run_dir),
               epochs=round(result.updates_done / max(result.plan.updates_per_epoch, 1), 2))
    ev = subprocess.run(evaluate, cwd=ROOT, env=env, capture_output=True, text=True)
    if ev.returncode != 0:
        return {**row, "error": f"evaluate exit {ev.returncode}: {ev.stderr.strip()[-400:]}"}
    report = EvalReport.model_validate_json(ev.stdout)
    row.update(bpb=round(report.bits_per_byte, 4), val_bytes=report.n_bytes, context_bits=report.context_bits,
               compressors={k: round(x, 3) for k, x in report.compressors.items()},
               wall_s=round(time.perf_counter() - t0, 1))
    print(f"[{label} s{seed}] {row['updates']} updates, {row['bpb']:.4f} bits/byte ({row['wall_s']:.0f} s wall)",
          flush=True)
    return row


def summarise(rows: list[dict], variants: list[Variant]) -> list[dict]:
    """Per variant: mean bits/byte over seeds and the mean paired delta vs the best recipe's same-seed run."""
    best = {r["seed"]: r["bpb"] for r in rows if r["label"] == "best" and "bpb" in r}
    out = []
    for v in variants:
        runs = [r for r in rows if r["label"] == v.name]
        for r in runs:
            if "bpb" in r and r["seed"] in best:
                r["delta"] = round(r["bpb"] - best[r["seed"]], 4)
        ok = [r for r in runs if "bpb" in r]
        deltas = [r["delta"] for r in ok if "delta" in r]
        out.append({"variant": v.name, "change": v.change, "seeds": [r["seed"] for r in ok],
                    "mean_bpb": round(sum(r["bpb"] for r in ok) / len(ok), 4) if ok else None,
                    "mean_delta": round(sum(deltas) / len(deltas), 4) if deltas else None,
                    "failed": [r["seed"] for r in runs if "error" in r]})
    return out


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


COLUMNS = ("variant", "change", "seed", "updates", "CPU s used", "epochs", "bits/byte", "delta vs best",
           "mean over seeds")


def markdown(rows: list[dict], summary: list[dict], headline: list[dict], budget: str | None) -> str:
    lines = [f"Ablation ({budget or 'updates'} budget per run): each row turns one change of the best recipe off.", "",
             "| " + " | ".join(COLUMNS) + " |", "| --- | --- |" + " ---: |" * (len(COLUMNS) - 2)]
    for s in summary:
        runs = sorted((r for r in rows if r["label"] == s["variant"]), key=lambda r: r["seed"])
        for i, r in enumerate(runs):
            mean = (f"{_num(s['mean_bpb'], '.3f')} ({_num(s['mean_delta'], '+.3f')})" if i == 0 else "")
            bpb = _num(r.get("bpb"), ".3f") if "error" not in r else "FAILED"
            lines.append(f"| {s['variant'] if i == 0 else ''} | {s['change'] if i == 0 else ''} | {r['seed']} | "
                         f"{r.get('updates', '-')} | {_num(r.get('budget_used_s'), '.0f')} | "
                         f"{_num(r.get('epochs'), '.2f')} | {bpb} | "
                         f"{_num(r.get('delta'), '+.3f')} | {mean} |")
    for h in headline:
        comp = ", ".join(f"{k} {x:.2f}" for k, x in h.get("compressors", {}).items())
        lines += ["", f"Headline, best recipe for {h['budget']} of CPU time (seed {h['seed']}): "
                      f"**{_num(h.get('bpb'), '.3f')} bits/byte** on {h.get('val_bytes', '-')} validation bytes, "
                      f"{h.get('updates', '-')} updates ({_num(h.get('epochs'), '.2f')} epochs); {comp}."
                      + (f" FAILED: {h['error']}" if "error" in h else "")]
    cmds = [r for r in rows if r["label"] == "best"][:1] + headline[:1]
    lines += ["", "Commands (the best recipe; each variant changes the flags named above):", "", "```bash",
              *(c for r in cmds if "train_command" in r for c in (r["train_command"], r["eval_command"])), "```"]
    return "\n".join(lines) + "\n"


def summary_line(summary: list[dict], headline: list[dict], budget: str | None) -> str:
    best = next((s for s in summary if s["variant"] == "best"), None)
    parts = []
    for h in headline:
        target = TARGETS.get(h["budget"])
        parts.append(f"best recipe {_num(h.get('bpb'), '.3f')} bits/byte after {h['budget']} of CPU time"
                     + (f" (target <= {target:.2f})" if target else ""))
    if best and best["mean_bpb"] is not None:
        target = TARGETS.get(budget or "")
        n = len(best["seeds"])
        parts.append(f"{best['mean_bpb']:.3f} after {budget} (mean of {n} seed{'s' * (n != 1)}"
                     + (f", target <= {target:.2f})" if target else ")"))
    costs = [f"{s['variant']} {_num(s['mean_delta'], '+.3f')}" for s in summary if s["variant"] != "best"]
    if costs:
        parts.append("each change off (bits/byte vs best): " + ", ".join(costs))
    return "Tiny Shakespeare val, 1 thread, through the CLI: " + "; ".join(parts)


def flag_pairs(p: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--set`` FLAG=VALUE items as a dict (a parser error names the bad ones)."""
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        p.error(f"--set takes FLAG=VALUE pairs, got {', '.join(bad)}")
    return dict(kv.split("=", 1) for kv in items)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA)], help="train --data (default Tiny Shakespeare)")
    p.add_argument("--budget", default="5m", help="CPU-time budget of each ablation run (train --time_budget)")
    p.add_argument("--headline", nargs="*", default=["15m"],
                   help="budgets of the best recipe's headline runs ('none': skip)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=[v.name for v in VARIANTS],
                   choices=[v.name for v in VARIANTS], help="which ablation rows (default all)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--steps", type=int, default=None, help="a budget in updates instead of time (smoke tests)")
    p.add_argument("--eval_max_bytes", type=int, default=None, help="score only the first bytes of val")
    p.add_argument("--set", nargs="*", default=[], metavar="FLAG=VALUE",
                   help="extra train flags for every run, e.g. layers=2 (smoke tests)")
    p.add_argument("--quick", action="store_true", help="smoke-sized: two variants, 20 s each, 4 KB of val")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.budget, a.headline, a.seeds, a.variants, a.eval_max_bytes = "20s", [], [0], ["best", "adamw"], 4096
    a.headline = [] if a.headline in (["none"], ["0"]) else a.headline
    a.set = flag_pairs(p, a.set)
    if a.steps:
        a.budget = None
    return a


def report(rows: list[dict], variants: list[Variant], a: argparse.Namespace, argv, started: dict,
           pending: int) -> dict:
    """The results so far (rewritten after every run, so a long ablation can be read while it goes on)."""
    headline = [r for r in rows if r["label"] == "headline"]
    ablation = [r for r in rows if r["label"] != "headline"]
    summary = summarise(ablation, variants)
    out = {"command": "python -m benchmarks.bench_recipe " + " ".join(argv if argv is not None else sys.argv[1:]),
           "recipe": RECIPE, "budget": a.budget, "steps": a.steps, "seeds": a.seeds, "jobs": a.jobs,
           "targets": TARGETS, "runs": ablation, "variants": summary, "headline": headline, "pending_runs": pending,
           "wall_seconds": round(time.perf_counter() - started["t0"], 1), "load_average_start": started["load"],
           "load_average_end": load_avg(), "machine": started["machine"],
           "summary": summary_line(summary, headline, a.budget)}
    table = markdown(ablation, summary, headline, a.budget)
    if pending:
        table += f"\n*In progress: {pending} run(s) still to come.*\n"
    write_report("bench_recipe", out, table, a.out)
    return out


def main(argv=None) -> dict:
    a = parse_args(argv)
    variants = [v for v in VARIANTS if v.name in a.variants]
    best = next(v for v in VARIANTS if v.name == "best")
    # The headline first (the longest run starts at once, the ablation fills the other core meanwhile), then the
    # ablation seed by seed: if it is stopped early, every variant has a run before any has its second.
    work = [(best, s, b, "headline") for b in a.headline for s in a.seeds[:1]]
    work += [(v, s, a.budget, v.name) for s in a.seeds for v in variants]
    started = {"t0": time.perf_counter(), "load": load_avg(), "machine": machine_info()}
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        futures = [pool.submit(run_variant, v, s, b, a, label) for v, s, b, label in work]
        for _ in as_completed(futures):
            rows = [f.result() for f in futures if f.done()]  # in work order
            out = report(rows, variants, a, argv, started, pending=len(work) - len(rows))
    print(out["summary"], flush=True)
    return out


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any("error" in r for r in [*res["runs"], *res["headline"]]) else 0)
