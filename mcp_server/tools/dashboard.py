"""The dashboard as an MCP App: the ``dashboard`` tool (the model opens it) and ``dashboard_data`` (app-only).

Apps are an extension that ``MCPServer`` takes at construction, so ``build_apps(app)`` returns the
``Apps`` instance for ``MCPServer(..., extensions=[...])`` rather than registering on a built server.
``hide_app_only`` keeps ``dashboard_data`` out of tools/list for clients without Apps.
Both tools return a one-line text result: the app's data travels as ``structuredContent`` of the
app-only tool, which hosts hand to the app and keep out of the model's context.
"""

from __future__ import annotations

import math
from typing import Annotated

from mcp.server.apps import Apps, client_supports_apps
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent
from pydantic import Field

from ..budget import app_only
from ..dashboard import URI, html
from ..dashboard.data import find_job, snapshot, to_bpb
from .common import guarded, read_only

JobArg = Annotated[str | None, Field(max_length=80, description="Default: the active or newest job.")]


def status_line(job) -> str:
    """One line a person or a model can act on: status, progress, latest losses, what to call next."""
    if job is None:
        return "No jobs yet: train(steps=N) starts one."
    rec = job.record
    total = job.total_updates()
    text = f"{job.id} {job.status}: update {job.update()}/{total or '?'}"
    loss = to_bpb(rec.last_step.loss) if rec.last_step else None
    if loss is not None:
        text += f", train {loss:.3f} bpb"
    if rec.last_eval is not None and math.isfinite(rec.last_eval.val_bpb):
        text += f", val {rec.last_eval.val_bpb:.3f} bpb"
    if rec.checkpoint:
        text += f", checkpoint {rec.checkpoint}"
    return text + "."


def build_apps(app) -> Apps:
    apps = Apps()
    apps.add_html_resource(URI, html(), name="dashboard", title="Training dashboard",
                           description="Live training dashboard (MCP App).", prefers_border=True)

    @apps.tool(resource_uri=URI, visibility=["model", "app"], name="dashboard",
               description="Live training dashboard of a job (MCP App); a one-line status where Apps don't render.",
               annotations=read_only("Training dashboard"))
    @guarded
    def dashboard(ctx: Context, job_id: JobArg = None) -> CallToolResult:
        # The text result is all the model sees; the app fetches its data itself (dashboard_data).
        job = find_job(app, job_id)
        if job_id and job is None:
            raise ValueError(f"unknown job_id {job_id!r}; list_jobs() shows the jobs")
        text = status_line(job)
        if client_supports_apps(ctx):
            text += " The dashboard shows it live."
        elif job is not None:
            text += f" get_job('{job.id}') has the details; bt://jobs/{job.id}/loss.png plots it."
        return CallToolResult(content=[TextContent(type="text", text=text)],
                              structured_content={"job_id": job.id if job else None})

    @apps.tool(resource_uri=URI, visibility=["app"], name="dashboard_data", description="Dashboard data (app-only).")
    @guarded
    def dashboard_data(job_id: JobArg = None,
                       since: Annotated[int, Field(ge=0, description="Only steps after this update.")] = 0
                       ) -> CallToolResult:
        snap = snapshot(app, job_id, since)
        job = snap["job"]
        text = f"{job['id']} {job['status']} {job['update']}/{job['total_updates']}" if job else snap["note"]
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=snap)

    return apps


async def hide_app_only(ctx, call_next):
    """Server middleware: a client that does not render MCP Apps is not sent app-only tools in tools/list (it
    would put them in the model's context: hosts with Apps hide them themselves). They stay callable."""
    result = await call_next(ctx)
    if ctx.method == "tools/list" and isinstance(result, dict) and not client_supports_apps(ctx):
        result = {**result, "tools": [t for t in result.get("tools") or [] if not app_only(t)]}
    return result
