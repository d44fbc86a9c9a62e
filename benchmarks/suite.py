"""The benchmark suite: a registry, a runner (one subprocess per benchmark) and the published table.

Every benchmark runs in its own Python process with its own thread settings (``OMP_NUM_THREADS``), a
quick and a full argument set and a time limit, so a crash or a hang fails that entry and the suite goes
on. Afterwards the suite reads each benchmark's JSON (every one carries a one-line ``summary``), records
the machine, and writes ``suite.json`` + ``suite.md`` (what | command | result). ``update_docs``
swaps the table into docs/benchmarks.md (the one place the figures are published) between the bench-table
markers and copies the quality plot to ``docs/figures/quality.png``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import ROOT, cpu_model, git_commit, machine_info

BEGIN, END = "<!-- bench-table:begin -->", "<!-- bench-table:end -->"
FIGURE = ROOT / "docs" / "figures" / "quality.png"
DOC = ROOT / "docs" / "benchmarks.md"  # the generated table lives here and nowhere else
# The published results (committed): what the table in DOC is generated from. A run of some benchmarks
# replaces their entries and keeps the others', so no figure has to be copied by hand.
PUBLISHED = ROOT / "docs" / "benchmarks" / "suite.json"


@dataclass(frozen=True)
class Bench:
    name: str
    what: str  # the table's first column
    target: str  # a module (``benchmarks.bench_x``) or a script path relative to the repository root
    quick: tuple[str, ...]
    full: tuple[str, ...]
    est_quick_s: float
    est_full_s: float
    result: str = ""  # JSON file name under the out dir (default ``<module leaf>.json``)
    out_args: tuple[str, ...] = ("--out", "{out}")
    plot: str | None = None  # a PNG the benchmark writes under the out dir
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def is_script(self) -> bool:
        return self.target.endswith(".py")

    @property
    def result_file(self) -> str:
        return self.result or self.target.rsplit(".", 1)[-1] + ".json"

    def available(self) -> bool:
        if self.is_script:
            return (ROOT / self.target).is_file()
        try:
            return importlib.util.find_spec(self.target) is not None
        except (ImportError, ValueError):
            return False

    def argv(self, quick: bool, out: Path) -> list[str]:
        head = [str(ROOT / self.target)] if self.is_script else ["-m", self.target]
        return [*head, *(self.quick if quick else self.full), *(a.format(out=out) for a in self.out_args)]

    def command(self, quick: bool = False) -> str:
        """How a reader re-runs it alone (the table's middle column)."""
        head = f"python {self.target}" if self.is_script else f"python -m {self.target}"
        return " ".join([head, *(shlex.quote(x) for x in (self.quick if quick else self.full))])


REGISTRY: dict[str, Bench] = {b.name: b for b in [
    Bench("codec", "bit codec throughput (text <-> bits)", "benchmarks.bench_codec",
          ("--mb", "2", "--repeats", "3"), (), 15, 30),
    Bench("telemetry", "telemetry overhead (forward with / without)", "benchmarks.bench_telemetry",
          ("--device", "cpu", "--repeats", "3", "--seq-len", "288"), ("--device", "cpu", "--repeats", "9"), 20, 60),
    Bench("throughput", "training throughput, tasks A/B/C vs a plain PyTorch reference, MFU",
          "benchmarks.bench_throughput", ("--quick",), ("--batch", "2", "--repeats", "5"), 60, 240),
    Bench("amp", "bf16 autocast vs fp32 training step", "benchmarks.bench_amp", ("--quick",), (), 25, 150),
    Bench("memory", "training memory: standard vs checkpointing vs reversible vs reversible+ACT",
          "benchmarks/bench_memory.py", ("--quick", "--seq", "256", "--batch", "4"),
          ("--depths", "4", "8", "16", "32", "--seq", "256", "--batch", "4"), 60, 180,
          result="memory.json", out_args=("--out", "{out}/memory.json")),
    Bench("quality", "quality per CPU-minute on Tiny Shakespeare (time budget): flat and framed bits vs compressors",
          "benchmarks.bench_quality_compare", ("--quick",), (), 75, 1440, plot="quality.png"),
    Bench("speed", "default config: attention-dropout trap; flat vs framed training; generation with a KV cache",
          "benchmarks.bench_speed", ("--quick",), ("--threads", "1"), 20, 600),
    Bench("int8", "INT8 export vs fp32 (task B shape)", "benchmarks.bench_int8",
          ("--steps", "20", "--batch-size", "4", "--eval-bytes", "2048", "--repeats", "3", "--timing-shapes", ""),
          ("--steps", "120", "--batch-size", "8", "--eval-bytes", "16384", "--repeats", "7"), 60, 330,
          result="int8.json"),
    Bench("int4", "INT4 export (per-group, PTQ and 4-bit QAT) vs INT8 and fp32 (task B shape, trained by the Trainer)",
          "benchmarks.bench_int4",
          ("--steps", "2", "--batch-size", "2", "--layers", "2", "--d-model", "64", "--nhead", "4", "--seq-len", "144",
           "--chunk-size", "72", "--eval-bytes", "128", "--repeats", "1", "--gen-bytes", "2", "--group-sizes", "32",
           "--finetune-steps", "2"),
          ("--steps", "200", "--batch-size", "8", "--eval-bytes", "16384", "--repeats", "7"), 8, 840,
          result="int4.json"),
    Bench("server", "MCP server start-up and tool latency while a job trains", "benchmarks.bench_server",
          ("--requests", "10", "--seconds", "3", "--startups", "1"), (), 30, 90),
    Bench("distributed", "data-parallel training: N processes vs 1 (CPU, gloo)", "benchmarks.bench_distributed",
          ("--quick",), (), 60, 300),
    Bench("diffusion", "denoising (diffusion) bound vs causal bits per byte at equal updates; sampler speed",
          "benchmarks.bench_diffusion", ("--quick",), (), 60, 600),
    Bench("recipe", "best CPU recipe through the CLI on Tiny Shakespeare: 15-min headline, 5-min ablation "
          "(each change off, 2 seeds)", "benchmarks.bench_recipe", ("--quick",), (), 45, 3600),
    Bench("distill", "distillation: a half-depth student distilled from the 15-min recipe model vs trained from "
          "scratch, equal CPU time (2 seeds)", "benchmarks.bench_distill", ("--quick",), (), 60, 2400),
]}


def plan(benches: list[Bench], quick: bool) -> str:
    est = [(b, b.est_quick_s if quick else b.est_full_s) for b in benches]
    lines = [f"Benchmark suite, {'quick' if quick else 'full'} mode: {len(benches)} benchmarks, "
             f"about {sum(s for _, s in est) / 60:.0f} min in all"]
    for b, s in est:
        flag = "" if b.available() else "   (missing: will be reported, not run)"
        lines.append(f"  {b.name:<12} ~{s / 60:5.1f} min  {b.command(quick)}{flag}")
    return "\n".join(lines)


def run_one(b: Bench, quick: bool, out: Path, threads: int, timeout: float | None = None,
            echo: bool = True) -> dict:
    """Run one benchmark in a subprocess; returns its suite entry (status, seconds, summary, result)."""
    entry = {"name": b.name, "what": b.what, "command": b.command(quick), "mode": "quick" if quick else "full",
             "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": git_commit(),
             "cpu": cpu_model()}
    if not b.available():
        return {**entry, "status": "missing", "seconds": 0.0, "summary": f"not run: {b.target} does not exist"}
    result = out / b.result_file
    result.unlink(missing_ok=True)  # never report a stale result as this run's
    env = {**os.environ, **b.extra_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
        "PYTHONPATH")])), "MPLBACKEND": "Agg"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    limit = timeout or 3 * (b.est_quick_s if quick else b.est_full_s) + 300
    log_path = out / f"{b.name}.log"
    t0 = time.perf_counter()
    status = "ok"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *b.argv(quick, out)], cwd=ROOT, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:  # a thread, so that a silent hang still meets the time limit below
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if echo:
                    print(f"[{b.name}] {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: workers it started go too
            proc.wait()
            status = "timeout"
        reader.join(timeout=10)
    seconds = round(time.perf_counter() - t0, 1)
    entry.update(seconds=seconds, log=str(log_path), exit_code=proc.returncode)
    if status == "ok" and proc.returncode != 0:
        status = "failed"
    data = None
    if result.is_file():
        try:
            data = json.loads(result.read_text())
        except json.JSONDecodeError:
            data = None
    if status == "ok" and data is None:
        status = "failed"
    if status != "ok":
        tail = log_path.read_text().strip().splitlines()[-3:] if log_path.is_file() else []
        if status == "timeout":
            reason = f"killed after {limit:.0f} s"
        elif proc.returncode:
            reason = f"exit {proc.returncode}"
        else:
            reason = f"exit 0 but no readable {b.result_file}"
        entry.update(status=status, summary=f"{status.upper()} ({reason}): " + " | ".join(tail)[-300:])
        return entry
    entry.update(status="ok", summary=(data or {}).get("summary") or "(no summary in its JSON)",
                 result=str(result))
    if b.plot and (out / b.plot).is_file():
        entry["plot"] = str(out / b.plot)
    return entry


def _short(commit: str | None) -> str:
    if not commit:
        return "unknown"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _link(path: Path, doc: Path) -> str:
    """``path`` as a link target from ``doc``'s folder (relative inside the repository)."""
    return Path(os.path.relpath(path, doc.parent)).as_posix() if path.is_relative_to(ROOT) else str(path)


def table(entries: list[dict], machine: dict, doc: Path = DOC) -> str:
    flags = ", ".join(machine.get("cpu_flags") or []) or "-"
    dates = sorted(e["started"][:10] for e in entries if e.get("started")) or [machine["date"][:10]]
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    shown = PUBLISHED.relative_to(ROOT).as_posix() if PUBLISHED.is_relative_to(ROOT) else str(PUBLISHED)
    cpus = sorted({e.get("cpu") or machine["cpu"] for e in entries}) or [machine["cpu"]]
    where = f"{cpus[0]} ({machine['cpu_count']} CPUs; {flags})" if len(cpus) == 1 else " and ".join(cpus)
    lines = [f"Measured on {where}, torch {machine['torch']}, Python "
             f"{machine['python']}, {when} (each row's date, commit and CPU: [{shown}]({_link(PUBLISHED, doc)})); "
             f"{machine.get('threads') or 'default'} torch thread(s) per benchmark. "
             "Regenerate: `python -m benchmarks --update-docs [NAME ...]` (rows not run keep their published "
             "result).", "",
             "| what | command | result |", "| --- | --- | --- |"]
    for e in entries:
        result = e["summary"].replace("|", "/").replace("\n", " ")
        if e.get("mode") == "quick":
            result = "*quick smoke run:* " + result
        lines.append(f"| {e['what']} | `{e['command']}` | {result} |")
    if any(e.get("plot") and e.get("status") == "ok" for e in entries):
        lines += ["", f"![Validation bits per byte vs training time, bit vs byte model]"
                      f"({_link(FIGURE, doc)})"]
    return "\n".join(lines) + "\n"


def merge_previous(entries: list[dict], out: Path) -> list[dict]:
    """Entries of this run, plus earlier entries for benchmarks not run now (registry order): first those of
    ``out/suite.json``, then the published ones (``PUBLISHED``)."""
    done = {e["name"]: e for e in entries}
    for prev_file in (out / "suite.json", PUBLISHED):
        if not prev_file.is_file():
            continue
        try:
            for e in json.loads(prev_file.read_text()).get("entries", []):
                done.setdefault(e["name"], e)
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    order = list(REGISTRY)
    return sorted(done.values(), key=lambda e: order.index(e["name"]) if e["name"] in order else len(order))


def replace_block(text: str, block: str, begin: str = BEGIN, end: str = END, where: str = "docs/benchmarks.md") -> str:
    """``text`` (the contents of ``where``) with everything between the begin and end markers replaced by ``block``."""
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{where} must contain exactly one '{begin}' and one '{end}' marker (found "
                         f"{text.count(begin)} and {text.count(end)}); add them around the benchmark table")
    i, j = text.index(begin) + len(begin), text.index(end)
    if j < i:
        raise ValueError(f"'{end}' comes before '{begin}' in {where}")
    return text[:i] + "\n" + block.strip("\n") + "\n" + text[j:]


def update_docs(doc: Path, block: str, entries: list[dict], *, allow_quick: bool = False,
                figure: Path = FIGURE, publish: bool = True) -> list[str]:
    """Swap the table into ``doc``, publish the entries and copy the quality plot; returns what was written."""
    quick = [e["name"] for e in entries if e.get("mode") == "quick"]
    if quick and not allow_quick:
        raise ValueError(f"quick-mode results for {', '.join(quick)}: the published table quotes full runs "
                         "(run them without --quick, or pass --allow-quick)")
    doc.write_text(replace_block(doc.read_text(), block, where=doc.name))
    written = [str(doc)]
    for e in entries:
        plot = ROOT / e["plot"] if e.get("plot") else None  # published paths are relative to the repository
        if plot is not None and plot.is_file() and plot.resolve() != figure.resolve():
            figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plot, figure)
            written.append(str(figure))
            e["plot"] = figure.relative_to(ROOT).as_posix() if figure.is_relative_to(ROOT) else str(figure)
    if publish:
        PUBLISHED.parent.mkdir(parents=True, exist_ok=True)
        keep = ("name", "what", "command", "mode", "status", "summary", "seconds", "started", "commit", "cpu",
                "plot")
        rows = [{k: e[k] for k in keep if k in e} for e in entries]
        PUBLISHED.write_text(json.dumps({"entries": rows}, indent=2) + "\n")
        written.append(str(PUBLISHED))
    return written


update_readme = update_docs  # the name before the table moved out of README.md


def run_suite(benches: list[Bench], *, quick: bool, out: Path, threads: int = 1, echo: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    print(plan(benches, quick), flush=True)
    t0 = time.perf_counter()
    entries = []
    for b in benches:
        print(f"\n=== {b.name} ===", flush=True)
        entries.append(run_one(b, quick, out, threads, echo=echo))
        e = entries[-1]
        print(f"=== {b.name}: {e['status']} in {e['seconds']:.0f} s: {e['summary']}", flush=True)
    machine = {**machine_info(), "threads": threads}
    all_entries = merge_previous(entries, out)
    suite = {"machine": machine, "mode": "quick" if quick else "full", "ran": [b.name for b in benches],
             "seconds": round(time.perf_counter() - t0, 1), "entries": all_entries}
    suite["table"] = table(all_entries, machine)
    (out / "suite.json").write_text(json.dumps(suite, indent=2))
    (out / "suite.md").write_text(suite["table"])
    return suite
