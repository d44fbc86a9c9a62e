"""Prompt texts that tell an agent to execute recipes with the server's tools and how to read the results."""

from __future__ import annotations

import json
from typing import Any

from .model import Expect, ResolvedRecipe, Step
from .recipes import HOW_TO, POLL_S, normalize_id, resolve, select

INTRO = ("You are running the BitTransformerLM optimization-and-training playbook through this MCP server's tools. "
         "Phase 1 (tasks 1-12, then the sanity fit) checks that every training-loop and runtime optimization "
         "exists and works and that a small model really learns; Phase 2 (tasks A, B, C) trains the seed's "
         "models with its exact hyperparameters and validates them.")


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in args.items())


def _expect_line(e: Expect) -> str:
    value = "" if e.op in ("exists", "is null", "not null", "finite", "nondecreasing", "nonincreasing") \
        else f" {json.dumps(e.value)}"
    extra = (" (each item)" if e.each else "") + (f" (tol {e.tol:g})" if e.tol is not None else "")
    why = f"  # {e.why}" if e.why else ""
    fix = f"  FIX if it fails: {e.fix}" if e.fix else ""
    return f"      - {e.path} {e.op}{value}{extra}{why}{fix}"


def _step_lines(i: int, s: Step) -> list[str]:
    head = f"  {i}. [{s.id}] {s.tool}({_args(s.args)})"
    if s.wait:
        head += f"  -> then poll get_job(job_id, wait_s={POLL_S}) until active is false"
        if s.fetch:
            head += f"; then get_job(job_id, {_args(s.fetch)}) once and check that result"
    if s.precondition:
        head += "  [PRECONDITION: refuse the recipe if any check fails; report its FIX]"
    lines = [head]
    if s.note:
        lines.append(f"     {s.note}")
    lines += [_expect_line(e) for e in s.expect]
    return lines


def recipe_prompt(r: ResolvedRecipe) -> str:
    lines = [f"Playbook task {r.id} (phase {r.phase}, scale {r.scale}): {r.title}", "", f"Why: {r.why}"]
    if r.seed:
        lines.append(f"Seed instruction: {r.seed}")
    if r.preconditions:
        checks = [f"[{s.id}] {s.tool}" for s in r.steps if s.precondition]
        how = (f"the steps marked PRECONDITION ({', '.join(checks)}) check them with tool calls"
               if checks else "no step checks them: confirm them from your earlier results")
        lines += ["", f"Preconditions ({how}):"] + [f"  - {p}" for p in r.preconditions]
    lines += ["", "Steps (tool call, then the expectations on its result):"]
    for i, s in enumerate(r.steps, 1):
        lines += _step_lines(i, s)
    lines += ["", "How to execute: " + HOW_TO,
              "", "Finish with a table: step, check, measured value, expected, PASS/FAIL; then the verdict."]
    return "\n".join(lines)


def overview(phase: int | None, scale: str) -> str:
    recipes = select(phase=phase, scale=scale)
    scope = "the whole playbook" if phase is None else f"Phase {phase}"
    lines = [INTRO, "", f"Run {scope} at scale '{scale}' top to bottom, in this order:"]
    for r in recipes:
        pre = f" (preconditions: {'; '.join(r.preconditions)})" if r.preconditions else ""
        lines.append(f"  {r.id}. {r.title}{pre}")
    lines += ["", f"For each task call playbook_step(task_id=<id>, scale=\"{scale}\") and execute its steps.",
              "How to execute a recipe: " + HOW_TO,
              "", "Keep going after a failed check (later tasks are independent), but never run a recipe whose "
              "precondition failed unless the user overrides it. End with one line per task: id, PASS / FAIL / "
              "REFUSED, and the failing checks with their measured values."]
    return "\n".join(lines)


def render_prompt(target: str, scale: str = "smoke") -> str:
    """Prompt text for a task id ('1'..'12', 'A', 'B', 'C'), 'phase-1', 'phase-2' or 'all'."""
    key = str(target).strip().lower()
    if key in ("all", "playbook", ""):
        return overview(None, scale)
    if key in ("phase-1", "phase1", "1-12"):
        return overview(1, scale)
    if key in ("phase-2", "phase2"):
        return overview(2, scale)
    return recipe_prompt(resolve(normalize_id(target), scale))
