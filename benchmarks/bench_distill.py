"""Distillation at equal CPU time: a half-depth student trained from scratch vs distilled from the recipe model.

    python -m benchmarks.bench_distill            # teacher 15 CPU-min; students 5 CPU-min each, seeds 0 and 1
    python -m benchmarks.bench_distill --quick    # smoke-sized

Every run goes through the CLI (the product's Trainer), one torch thread, ``--budget_clock cpu``:

- teacher: the best CPU recipe (``bench_recipe.RECIPE``, the default config: framed, 4 layers x 128) for
  ``--teacher_budget``;
- student: the same recipe at half depth (2 layers x 128). Half depth halves the blocks' parameters and their
  cost per update while keeping the width, heads and embeddings of the teacher, so depth is the one difference;
  (a) ``scratch``: trained alone for ``--budget``;
  (b) ``distilled``: the same flags plus ``--teacher <teacher run> --distill_weight A --distill_temperature T``
  for the same ``--budget``. The teacher's forward runs inside every update, so its cost is counted in the
  student's budget (fewer updates than scratch): the honest comparison.

Each checkpoint is scored like ``bench_recipe``: ``evaluate`` over the whole validation split (the last 111,540
bytes of Tiny Shakespeare), each window seeing 3/4 of its length as context. Deltas are paired (distilled minus
scratch, same seed). Writes ``<out>/bench_distill.{json,md}``; run directories under ``<out>/distill_runs/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_quality import DEFAULT_DATA
from benchmarks.bench_recipe import RECIPE, Variant, flag_pairs, run_variant
from benchmarks.common import load_avg, machine_info
from benchmarks.report import RESULTS, write_report

RUNS = "distill_runs"
STUDENT = {"layers": str(int(RECIPE["layers"]) // 2)}  # half depth, everything else the teacher's


def variants(a: argparse.Namespace) -> dict[str, Variant]:
    teacher_dir = a.out / RUNS / f"teacher_s{a.teacher_seed}"
    distil = {"teacher": str(teacher_dir), "distill_weight": str(a.alpha), "distill_temperature": str(a.temperature)}
    return {
        "teacher": Variant("teacher", "the recipe (default config)", {}),
        "scratch": Variant("scratch", "half depth, from scratch", STUDENT),
        "distilled": Variant("distilled", f"half depth, distilled (alpha={a.alpha:g}, T={a.temperature:g})",
                             {**STUDENT, **distil}),
    }


def last_step(run_dir: Path) -> dict:
    """The run's last 'step' event (its final loss parts: raw_loss = the data CE, distill_kl)."""
    last: dict = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        event = json.loads(line)
        if event.get("event") == "step":
            last = event
    return last


def run(v: Variant, seed: int, budget: str, a: argparse.Namespace) -> dict:
    row = run_variant(v, seed, budget, a, v.name, runs=RUNS)
    step = last_step(a.out / RUNS / f"{v.name}_s{seed}")
    if step.get("raw_loss") is not None:
        row["final_train_ce"] = round(step["raw_loss"], 4)
    if step.get("distill_kl") is not None:
        row["final_kl"] = round(step["distill_kl"], 4)
    return row


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def summarise(rows: list[dict]) -> dict:
    by = {(r["variant"], r["seed"]): r for r in rows}
    pairs = [(s, by[("scratch", s)]["bpb"], r["bpb"]) for (name, s), r in by.items()
             if name == "distilled" and "bpb" in r and "bpb" in by.get(("scratch", s), {})]
    out = {name: _mean([r["bpb"] for r in rows if r["variant"] == name and "bpb" in r])
           for name in ("teacher", "scratch", "distilled")}
    out["paired_delta"] = _mean([d - s for _, s, d in pairs])
    out["pairs"] = [{"seed": s, "scratch": sc, "distilled": d, "delta": round(d - sc, 4)} for s, sc, d in pairs]
    return out


def markdown(rows: list[dict], summary: dict, a: argparse.Namespace) -> str:
    lines = [f"Teacher {a.teacher_budget}, students {a.budget} of CPU time each (1 thread); bits/byte on the "
             "Tiny Shakespeare validation split.", "",
             "| run | change | seed | params | updates | CPU s used | epochs | final train CE | final KL | bits/byte |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        bpb = f"{r['bpb']:.3f}" if "bpb" in r else "FAILED"
        lines.append(f"| {r['variant']} | {r['change']} | {r['seed']} | {r.get('params', '-')} | "
                     f"{r.get('updates', '-')} | {r.get('budget_used_s', '-')} | {r.get('epochs', '-')} | "
                     f"{r.get('final_train_ce', '-')} | {r.get('final_kl', '-')} | {bpb} |")
    lines += ["", f"Mean bits/byte: scratch {summary['scratch']}, distilled {summary['distilled']}, paired delta "
                  f"(distilled - scratch) {summary['paired_delta']}.", "", "Commands:", "", "```bash"]
    for name in ("teacher", "distilled"):
        r = next((r for r in rows if r["variant"] == name and "train_command" in r), None)
        if r:
            lines += [r["train_command"], r["eval_command"]]
    return "\n".join([*lines, "```"]) + "\n"


def summary_line(summary: dict, a: argparse.Namespace) -> str:
    pairs = ", ".join(f"s{p['seed']} {p['scratch']:.3f} -> {p['distilled']:.3f}" for p in summary["pairs"])
    delta = summary["paired_delta"]
    return (f"Tiny Shakespeare val, 1 thread: teacher (recipe, {a.teacher_budget}) {summary['teacher']} bits/byte; "
            f"half-depth student, {a.budget} each, scratch {summary['scratch']} vs distilled {summary['distilled']} "
            f"({pairs}; mean delta {'-' if delta is None else format(delta, '+.3f')})")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA)], help="train --data (default Tiny Shakespeare)")
    p.add_argument("--teacher_budget", default="15m", help="the teacher's CPU-time budget")
    p.add_argument("--budget", default="5m", help="each student's CPU-time budget")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="student seeds")
    p.add_argument("--teacher_seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.5, help="--distill_weight of the distilled student")
    p.add_argument("--temperature", type=float, default=1.0, help="--distill_temperature of the distilled student")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one torch thread each)")
    p.add_argument("--eval_max_bytes", type=int, default=None, help="score only the first bytes of val")
    p.add_argument("--set", nargs="*", default=[], metavar="FLAG=VALUE",
                   help="extra train flags for every run, e.g. d_model=32 (smoke tests)")
    p.add_argument("--quick", action="store_true", help="smoke-sized: teacher 10 s, students 5 s, 4 KB of val")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.teacher_budget, a.budget, a.seeds, a.eval_max_bytes = "10s", "5s", [0], 4096
    a.set, a.steps = flag_pairs(p, a.set), None  # steps: bench_recipe.run_variant's other budget, unused here
    a.out = a.out.resolve()  # the runs execute in the repository root
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    v = variants(a)
    started = {"t0": time.perf_counter(), "load": load_avg(), "machine": machine_info()}
    # The teacher and the scratch students need nothing else: they start at once; the distilled ones wait for it.
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        teacher = pool.submit(run, v["teacher"], a.teacher_seed, a.teacher_budget, a)
        scratch = [pool.submit(run, v["scratch"], s, a.budget, a) for s in a.seeds]
        first = teacher.result()
        if "error" in first:
            distilled = [{"variant": "distilled", "change": v["distilled"].change, "seed": s,
                          "error": "no teacher: " + first["error"]} for s in a.seeds]
        else:
            distilled = [f.result() for f in [pool.submit(run, v["distilled"], s, a.budget, a) for s in a.seeds]]
        rows = [first, *(f.result() for f in scratch), *distilled]
    summary = summarise(rows)
    out = {"command": "python -m benchmarks.bench_distill " + " ".join(argv if argv is not None else sys.argv[1:]),
           "teacher_flags": v["teacher"].config(), "student_flags": v["scratch"].config(),
           "distill_flags": v["distilled"].flags, "teacher_budget": a.teacher_budget, "budget": a.budget,
           "seeds": a.seeds, "runs": rows, "means": summary,
           "wall_seconds": round(time.perf_counter() - started["t0"], 1),
           "load_average_start": started["load"], "load_average_end": load_avg(), "machine": started["machine"],
           "summary": summary_line(summary, a)}
    write_report("bench_distill", out, markdown(rows, summary, a), a.out)
    print(out["summary"], flush=True)
    return out


if __name__ == "__main__":
    res = main()
    sys.exit(1 if any("error" in r for r in res["runs"]) else 0)
