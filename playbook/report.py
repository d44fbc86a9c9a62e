"""Results of a playbook run: pydantic models (the JSON report), the pass/fail table and the exit code."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from .expect import short

StepStatus = Literal["ok", "failed", "error", "refused", "overridden", "skipped"]
RecipeStatus = Literal["passed", "failed", "refused", "error", "skipped"]


class CheckResult(BaseModel):
    step: str
    path: str
    op: str
    expected: Any = None
    measured: Any = None
    ok: bool
    detail: str = ""
    why: str = ""
    fix: str = ""
    key: bool = False
    precondition: bool = False


class StepResult(BaseModel):
    id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    status: StepStatus
    error: str | None = None
    job_id: str | None = None
    job_end: str | None = Field(None, description="A job that did not complete: its status and reason.")
    elapsed_s: float = 0.0
    calls: int = Field(0, description="Tool calls this step made (a training step polls get_job).")
    result_bytes: int = Field(0, description="Compact JSON bytes of the tool results it received.")
    checks: list[CheckResult] = Field(default_factory=list)


class RecipeResult(BaseModel):
    id: str
    phase: int
    title: str
    status: RecipeStatus
    reason: str | None = Field(None, description="Why it failed, was refused or errored.")
    override: str | None = Field(None, description="Set when failed preconditions were overridden.")
    elapsed_s: float = 0.0
    calls: int = 0
    result_bytes: int = Field(0, description="Compact JSON bytes of every tool result of the recipe.")
    tool_def_bytes: int = Field(0, description="calls x the model-visible tools/list bytes: a host re-sends the "
                                "tool definitions with every model turn, one turn per call.")
    context_bytes: int = Field(0, description="result_bytes + tool_def_bytes: the recipe's cost to an agent.")
    steps: list[StepResult] = Field(default_factory=list)

    @property
    def checks(self) -> list[CheckResult]:
        return [c for s in self.steps for c in s.checks]

    def account(self, tools_list_bytes: int) -> None:
        self.calls = sum(s.calls for s in self.steps)
        self.result_bytes = sum(s.result_bytes for s in self.steps)
        self.tool_def_bytes = self.calls * tools_list_bytes
        self.context_bytes = self.result_bytes + self.tool_def_bytes


class RunReport(BaseModel):
    scale: str
    server: str = Field(description="How the server was reached (command or URL).")
    workspace: str | None = None
    started_at: float
    planned: list[str] = Field(default_factory=list, description="Task ids to run, in order.")
    current: str | None = Field(None, description="The task running now (a report written during the run).")
    complete: bool = Field(False, description="False while the run goes on: the report holds the recipes so far.")
    elapsed_s: float = 0.0
    ok: bool = False
    counts: dict[str, int] = Field(default_factory=dict)
    tools_count: int = 0
    tools_list_bytes: int = Field(0, description="tools/list 'tools' array, compact JSON, every tool.")
    tools_list_bytes_model: int = Field(0, description="The same without app-only tools (what the model sees).")
    calls: int = 0
    result_bytes: int = Field(0, description="All tool results received, compact JSON bytes.")
    tool_def_bytes: int = Field(0, description="Tool definitions an agent would be sent: calls x model-visible "
                                "tools/list bytes.")
    context_bytes: int = Field(0, description="result_bytes + tool_def_bytes.")
    recipes: list[RecipeResult] = Field(default_factory=list)

    def finish(self, elapsed_s: float) -> RunReport:
        self.elapsed_s = round(elapsed_s, 2)
        self.calls = sum(r.calls for r in self.recipes)
        self.result_bytes = sum(r.result_bytes for r in self.recipes)
        self.tool_def_bytes = sum(r.tool_def_bytes for r in self.recipes)
        self.context_bytes = self.result_bytes + self.tool_def_bytes
        self.counts = {s: sum(r.status == s for r in self.recipes) for s in ("passed", "failed", "refused", "error",
                                                                          "skipped")}
        self.ok = bool(self.recipes) and all(r.status == "passed" for r in self.recipes)
        self.current, self.complete = None, True
        return self

    def write(self, path: str | Path) -> Path:
        """Atomically (write, then rename): the server's playbook_run reads it while the run goes on."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, p)
        return p


def exit_code(report: RunReport) -> int:
    """0: every recipe passed; 1: a check failed or a step errored; 3: only refusals (preconditions)."""
    if report.ok:
        return 0
    if any(r.status in ("failed", "error") for r in report.recipes) or not report.recipes:
        return 1
    return 3


def _label(c: CheckResult) -> str:
    path = c.why if c.path.startswith("=") and c.why else c.path  # a formula is shown by its meaning
    return f"{c.step}: {path} {c.op}"


def _expected(c: CheckResult) -> str:
    if c.op in ("exists", "is null", "not null", "finite", "nondecreasing", "nonincreasing"):
        return c.op
    return short(c.expected, 18)


W = 60  # width of the check column


def table(report: RunReport, *, verbose: bool = False) -> str:
    """The pass/fail table: per recipe its result and time, then its key checks (all with verbose) and every
    failed one, with measured and expected values."""
    head = ("task", "result", "time", "checks", "check", "measured", "expected", "calls", "result KB", "context KB")
    rows: list[tuple[str, ...]] = []
    for r in report.recipes:
        shown = [c for c in r.checks if verbose or c.key or not c.ok]
        n_ok = sum(c.ok for c in r.checks)
        result = {"passed": "PASS", "failed": "FAIL", "refused": "REFUSED", "error": "ERROR",
                  "skipped": "SKIP"}[r.status]
        if r.override and r.status == "passed":
            result = "PASS*"
        rows.append((r.id, result, f"{r.elapsed_s:.1f}s", f"{n_ok}/{len(r.checks)}", r.title[:W], "", "",
                     str(r.calls), _kb(r.result_bytes), _kb(r.context_bytes)))
        for c in shown:
            mark = "" if c.ok else ("!! " if not c.precondition else "?? ")
            rows.append(("", "", "", "", (mark + _label(c))[:W], short(c.measured, 22), _expected(c), "", "", ""))
        if r.reason and r.status != "passed":
            rows.append(("", "", "", "", ("-> " + r.reason)[:300], "", "", "", "", ""))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    widths[4] = min(widths[4], W)

    def fmt(row: tuple[str, ...]) -> str:
        cells = [row[i].ljust(widths[i]) for i in range(len(head))]
        if len(row[4]) > widths[4]:  # a long reason line runs over the value columns
            return " | ".join([*cells[:4], row[4]])
        return " | ".join(cells).rstrip()

    lines = [fmt(head), "-+-".join("-" * w for w in widths)]
    lines += [fmt(row) for row in rows]
    c = report.counts
    lines.append("")
    lines.append(f"scale {report.scale}: {len(report.recipes)} recipes, {c.get('passed', 0)} passed, "
                 f"{c.get('failed', 0)} failed, {c.get('refused', 0)} refused, {c.get('error', 0)} errors "
                 f"in {report.elapsed_s:.1f} s  (!! = failed check, ?? = failed precondition, "
                 "PASS* = passed with a precondition overridden)")
    lines.append(f"agent context: tools/list {_kb(report.tools_list_bytes_model)} KB model-visible "
                 f"({_kb(report.tools_list_bytes)} KB all {report.tools_count} tools); {report.calls} calls received "
                 f"{_kb(report.result_bytes)} KB of results; with the tool definitions re-sent each call "
                 f"{_kb(report.context_bytes)} KB in total (compact JSON)")
    return "\n".join(lines)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f}"


RESULT_NAMES = {"passed": "PASS", "failed": "FAIL", "refused": "REFUSED", "error": "ERROR", "skipped": "SKIP"}


def _check_line(c: CheckResult) -> str:
    """'job: last_step.lr ~= 1.2e-08 (got 1.21e-08)', '(ok)' when they read the same; a failed check starts
    with '!!' (a precondition '??')."""
    mark = "" if c.ok else ("?? " if c.precondition else "!! ")
    expected, got = _expected(c), short(c.measured, 30)
    line = f"{mark}{_label(c)} {expected}"
    if c.ok and (got == expected or c.op in ("exists", "not null")):
        return line + " (ok)"  # the measured value is the expected one
    return line + f" (got {got})" + (f" FIX: {c.fix}" if c.fix and not c.ok else "")


def brief(report: RunReport | dict[str, Any], *, budget: int | None = None, detail: bool = False) -> dict[str, Any]:
    """The report as an agent reads it: a PASS/FAIL row per recipe, then its checks with expected and measured
    values. ``detail``: every check, titles and reasons. Otherwise failed checks and key checks, as many as fit
    ``budget`` bytes of compact JSON (failed ones first); ``omitted`` says how many were left out."""
    rep = report if isinstance(report, RunReport) else RunReport.model_validate(report)
    rows: list[tuple[str, list[tuple[int, str]]]] = []  # (recipe row, [(priority, check line)])
    for r in rep.recipes:
        checks = r.checks
        head = f"{r.id} {RESULT_NAMES[r.status]}{'*' if r.override else ''} {sum(c.ok for c in checks)}/{len(checks)}"
        head += f" {r.elapsed_s:.0f}s" + (f" {r.title}" if detail else "")
        if r.reason and r.status != "passed":
            head += f" -> {r.reason[:300 if detail else 160]}"
        shown = [(0 if not c.ok else 1, "  " + _check_line(c)) for c in checks if detail or c.key or not c.ok]
        rows.append((head, shown))
    n_pass = sum(r.status == "passed" for r in rep.recipes)
    out: dict[str, Any] = {"summary": f"{n_pass}/{len(rep.planned) or len(rep.recipes)} recipes passed"
                                      + ("" if rep.complete else f" so far ({len(rep.recipes)} run)")}
    out["table"] = [line for head, shown in rows for line in (head, *(text for _, text in shown))]
    if detail or budget is None:
        return out
    # Over budget: drop passing key checks (from the last recipe back), then failed ones' tails, keeping every row.
    dropped = 0
    for priority in (1, 0):
        for i in range(len(rows) - 1, -1, -1):
            head, shown = rows[i]
            while shown and _size(out, rows, dropped) > budget:
                j = max((k for k, (p, _) in enumerate(shown) if p == priority), default=None)
                if j is None:
                    break
                shown.pop(j)
                dropped += 1
    out["table"] = [line for head, shown in rows for line in (head, *(text for _, text in shown))]
    if dropped:
        out["omitted"] = f"{dropped} checks not shown (include=['result'] lists all)"
    return out


def _size(out: dict[str, Any], rows: list, dropped: int) -> int:
    table = [line for head, shown in rows for line in (head, *(text for _, text in shown))]
    extra = 56 if dropped else 0
    return len(json.dumps({**out, "table": table}, separators=(",", ":"), ensure_ascii=False).encode()) + extra
