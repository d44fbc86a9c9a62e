"""playbook_run: the server runs a recipe or a phase itself (``playbook_job.py``), as a job get_job polls.

get_job and cancel_job (tools/training.py) hand ids that ``playbook_job.owns`` to ``poll`` and ``cancel`` here.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from .. import playbook_hook as hook
from ..budget import RESULT_BUDGET, compact
from ..playbook_job import PlaybookRun
from ..views import PlaybookRunView, RunProgress
from .common import guarded, writes
from .compact import dump, reply
from .playbook import Scale

log = logging.getLogger(__name__)
POLL_S = 0.5


def view(app, run: PlaybookRun, *, detail: bool = False) -> PlaybookRunView:
    """Where it runs, progress, and (once recipes ended) the PASS/FAIL table: within the result budget unless
    ``detail`` (every check)."""
    runs = app.playbook_runs
    report = runs.report(run.job_id) or {}
    recipes = report.get("recipes") or []
    active = run.status == "running"
    end = run.finished_at or time.time()
    out = PlaybookRunView(
        job_id=run.job_id, status=run.status, active=active,
        where=f"scratch workspace {runs.rel(run.job_id, 'workspace')} with its own server: your config, current "
              "checkpoint and jobs are untouched",
        runs=f"{run.target}, {len(run.tasks)} recipe(s) at {run.scale} scale",
        progress=RunProgress(done=len(recipes), total=len(run.tasks), passed=sum(r.get("status") == "passed"
                                                                                  for r in recipes),
                             current=report.get("current") if active else None),
        reason=run.reason, report=runs.rel(run.job_id, "report.json"),
        elapsed_s=round(end - run.created_at, 1), next=_next(run),
    )
    if recipes:
        left = RESULT_BUDGET - len(compact(dump(out)).encode()) - 96  # room for summary and omitted
        try:
            brief = hook.brief_report(report, budget=left, detail=detail)
        except (hook.PlaybookUnavailable, ValueError) as err:
            out.reason = f"{out.reason or ''} (report unreadable: {err})".strip()
        else:
            omitted = brief.get("omitted")
            out.summary = brief.get("summary", "") + (f"; {omitted}" if omitted else "")
            out.table = brief.get("table")
    return out


def _next(run: PlaybookRun) -> str:
    if run.status == "running":
        return f"get_job('{run.job_id}', wait_s=50) until active is false; cancel_job('{run.job_id}') stops it"
    if run.status == "completed":
        return ("report the table; a FAIL row's '!!' lines give the check, expected and measured values "
                f"(get_job('{run.job_id}', include=['result']) lists every check)")
    return "read reason; playbook_run(...) again starts a fresh run"


async def poll(app, job_id: str, *, wait_s: float = 0.0, detail: bool = False,
               ctx: Context | None = None) -> CallToolResult:
    """get_job for a playbook run: wait up to ``wait_s`` for it to end (progress = recipes done), then its view."""
    runs = app.playbook_runs
    run = runs.get(job_id)
    if run is None:
        raise ToolError(f"unknown job_id {job_id!r}; list_jobs() shows jobs and playbook runs")
    deadline = time.monotonic() + wait_s
    last = -1
    while True:
        done = len((runs.report(job_id) or {}).get("recipes") or [])
        if ctx is not None and done > last:
            last = done
            try:
                await ctx.report_progress(done, len(run.tasks), f"{job_id}: {done}/{len(run.tasks)} recipes done")
            except Exception:  # a client that went away must not fail the call
                log.debug("progress notification failed", exc_info=True)
        if run.status != "running" or time.monotonic() >= deadline:
            break
        await anyio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        run = runs.refresh(run)
    return reply(view(app, run, detail=detail))


async def cancel(app, job_id: str, *, wait_s: float, ctx: Context | None = None) -> CallToolResult:
    run = app.playbook_runs.get(job_id)
    if run is None:
        raise ToolError(f"unknown job_id {job_id!r}; list_jobs() shows jobs and playbook runs")
    if run.status != "running":
        raise ToolError(f"{job_id} already ended ({run.status}); nothing to cancel")
    app.playbook_runs.cancel(run)
    return await poll(app, job_id, wait_s=wait_s, ctx=ctx)


def register(server: MCPServer, app) -> None:
    @server.tool(annotations=writes("Run playbook recipes", destructive=False))
    @guarded
    async def playbook_run(
        ctx: Context,
        task_id: Annotated[str | None, Field(max_length=40, description="One recipe, e.g. '6', 'sanity', 'A'.")]
        = None,
        phase: Annotated[int | None, Field(ge=1, le=2, description="A whole phase instead.")] = None,
        scale: Scale = "smoke",
        wait_s: Annotated[float, Field(ge=0, le=300, description="Seconds to wait for its end (<= 50).")] = 0.0,
    ) -> Annotated[CallToolResult, PlaybookRunView]:
        """Run one recipe (task_id) or a phase with the playbook's own checks, as a job: poll get_job(job_id,
        wait_s=50); cancel_job stops it. It runs on a scratch workspace (playbook/<job_id>/) with its own server:
        the user's config, checkpoint and jobs are untouched. Result: a PASS/FAIL row per recipe, then checks
        'expected (got measured)', '!!' = failed. Phase 1 smoke: minutes; one run at a time."""
        if (task_id is None) == (phase is None):
            raise ToolError("give task_id (one recipe, e.g. '6') or phase (1 or 2); playbook_list() shows them")
        try:
            if task_id is not None:
                recipe = hook.get_recipe(task_id, scale)
                tasks, target = [str(recipe["id"])], f"task {recipe['id']}"
            else:
                tasks = [str(r["id"]) for r in hook.list_recipes(scale) if r.get("phase") == phase]
                target = f"phase {phase}"
        except hook.PlaybookUnavailable as err:
            raise ToolError(str(err)) from err
        try:
            run = app.playbook_runs.start(tasks=tasks, target=target, scale=scale, phase=phase)
        except RuntimeError as err:
            raise ToolError(f"playbook run {err} is still running: get_job('{err}', wait_s=50), or "
                            f"cancel_job('{err}') first") from err
        return await poll(app, run.job_id, wait_s=wait_s, ctx=ctx)
