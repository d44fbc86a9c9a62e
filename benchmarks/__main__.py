"""Run the benchmark suite: ``python -m benchmarks [--quick] [--out DIR] [--update-docs] [NAME ...]``.

    python -m benchmarks --quick                 # every benchmark, smoke-sized (a few minutes)
    python -m benchmarks                         # full mode: the published numbers (~45 min)
    python -m benchmarks throughput amp          # some benchmarks only (full mode)
    python -m benchmarks --update-docs           # full run, then rewrite docs/benchmarks.md's table and the plot
    python -m benchmarks --plan                  # print the plan with estimated durations, run nothing

Each benchmark runs in its own process (see ``benchmarks/suite.py``); results, logs, ``suite.json``
and ``suite.md`` go to ``--out`` (default ``benchmarks/results/``, git-ignored).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.report import RESULTS
from benchmarks.suite import DOC, REGISTRY, plan, run_suite, update_docs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default all): {', '.join(REGISTRY)}")
    p.add_argument("--quick", action="store_true", help="smoke-sized arguments (minutes, not the published numbers)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch/OpenMP threads per benchmark (OMP_NUM_THREADS; 0 = torch's default). Default 1: "
                        "on a small shared machine two OpenMP threads collapse under any background load")
    # --update-readme: the spelling from when the table lived in README.md (kept so old commands still work)
    p.add_argument("--update-docs", "--update-readme", dest="update_docs", action="store_true",
                   help="replace the table between the bench-table markers of docs/benchmarks.md; copy the quality "
                        "plot to docs/figures/quality.png")
    p.add_argument("--allow-quick", action="store_true", help="let --update-docs write quick-mode results")
    p.add_argument("--doc", "--readme", dest="doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    p.add_argument("--plan", action="store_true", help="print the plan and exit")
    a = p.parse_args(argv)
    unknown = [n for n in a.names if n not in REGISTRY]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(REGISTRY)}")
    benches = [REGISTRY[n] for n in (a.names or REGISTRY)]
    if a.plan:
        print(plan(benches, a.quick))
        return 0
    if a.update_docs and a.quick and not a.allow_quick:
        p.error("--update-docs writes the published numbers: run full mode (drop --quick) or add --allow-quick")
    if a.update_docs:  # fail now, not after 45 minutes, if the markers are missing
        from benchmarks.suite import replace_block

        try:
            replace_block(a.doc.read_text(), "", where=str(a.doc))
        except (OSError, ValueError) as exc:
            p.error(f"--update-docs: {exc}")
    suite = run_suite(benches, quick=a.quick, out=a.out, threads=a.threads)
    print("\n" + suite["table"])
    print(f"suite: {suite['seconds'] / 60:.1f} min; wrote {a.out / 'suite.json'} and {a.out / 'suite.md'}")
    if a.update_docs:
        for path in update_docs(a.doc, suite["table"], suite["entries"], allow_quick=a.allow_quick):
            print(f"updated {path}")
    ran = [e for e in suite["entries"] if e["name"] in suite["ran"]]
    return 0 if all(e["status"] in ("ok", "missing") for e in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
