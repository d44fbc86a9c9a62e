"""Results of a playbook run: pydantic models (the JSON report), the pass/fail table and the exit code."""

from __future__ import annotations

import json
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
        return self

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(self.model_dump(mode="json"), indent=2, default=str) + "\n", encoding="utf-8")
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
