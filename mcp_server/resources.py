"""Resources: the config, job list, each job's metrics (JSON lines) and loss curve (PNG), checkpoints, recipes."""

from __future__ import annotations

import json

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from bit_transformer.loss_curve import CurvePoints, loss_curve_png

from . import playbook_hook as hook
from .dashboard.data import compressor_baselines
from .events import Evaluated, Event, EventReader, Step
from .workspace import WorkspaceError


def register(server: MCPServer, app) -> None:
    def job_dir(job_id: str):
        try:
            d = app.ws.job_dir(job_id)
        except WorkspaceError as err:
            raise ResourceNotFoundError(str(err)) from err
        if not (d / "job.json").is_file() or app.jobs.get(job_id) is None:  # the registry's walk is confined
            raise ResourceNotFoundError(f"unknown job {job_id!r}; bt://jobs lists the jobs")
        return d

    @server.resource("bt://config", name="config", mime_type="application/json",
                     description="The current run configuration (what patch_config edits).")
    def config_resource() -> str:
        return app.config().model_dump_json(indent=2)

    @server.resource("bt://jobs", name="jobs", mime_type="application/json",
                     description="All jobs with status and progress.")
    def jobs_resource() -> str:
        rows = [{"job_id": j.id, "status": j.status, "update": j.update(), "total_updates": j.total_updates(),
                 "checkpoint": j.record.checkpoint, "reason": j.record.reason} for j in app.jobs.all()]
        return json.dumps(rows, indent=2)

    @server.resource("bt://runs/compare", name="runs-compare", mime_type="application/json",
                     description="The newest 10 jobs side by side (what compare_runs returns).")
    def compare_resource() -> str:
        from .compare import compare

        return compare(app.jobs.all()[-10:]).model_dump_json()

    @server.resource("bt://jobs/{job_id}/metrics", name="job-metrics", mime_type="application/x-ndjson",
                     description="Every event of a job (plan, step, eval, checkpoint, done...) as JSON lines.")
    def metrics_resource(job_id: str) -> str:
        return (job_dir(job_id) / "metrics.jsonl").read_text(encoding="utf-8")

    @server.resource("bt://jobs/{job_id}/loss.png", name="job-loss-curve", mime_type="image/png",
                     description="Training and validation bits per byte of a job, with gzip/bzip2/xz lines, as PNG.")
    def loss_png(job_id: str) -> bytes:
        events = EventReader(job_dir(job_id) / "metrics.jsonl").read_events()
        job = app.jobs.get(job_id)
        baselines = compressor_baselines(app, job.record, block=True) if job is not None else None
        return loss_curve_png(curve_points(events), title=job_id, baselines=baselines)

    @server.resource("bt://checkpoints", name="checkpoints", mime_type="application/json",
                     description="Saved checkpoints ('<run>/<name>') with update and validation metrics.")
    def checkpoints_resource() -> str:
        rows = []
        for name, info in app.engine.checkpoints():
            d = info.model_dump(mode="json")
            d.pop("path", None)
            rows.append({**d, "name": name})
        return json.dumps(rows, indent=2)

    @server.resource("bt://playbook", name="playbook", mime_type="application/json",
                     description="The playbook recipes in full (smoke scale): steps, arguments, expectations.")
    def playbook_resource() -> str:
        try:
            return json.dumps(hook.export_recipes("smoke"), indent=2)
        except hook.PlaybookUnavailable as err:
            raise ResourceError(str(err)) from err

    @server.resource("bt://playbook/{scale}/{task_id}", name="playbook-recipe", mime_type="application/json",
                     description="One playbook recipe at a scale ('smoke' or 'full').")
    def recipe_resource(scale: str, task_id: str) -> str:
        if scale not in ("smoke", "full"):
            raise ResourceNotFoundError(f"scale must be 'smoke' or 'full', got {scale!r}")
        try:
            return json.dumps(hook.get_recipe(task_id, scale), indent=2)
        except hook.PlaybookUnavailable as err:
            raise ResourceError(str(err)) from err
        except ValueError as err:
            raise ResourceNotFoundError(str(err)) from err


def curve_points(events: list[Event]) -> CurvePoints:
    """A job's step and eval losses, for the engine's loss-curve figure."""
    return CurvePoints(steps=[(e.data.update, e.data.loss) for e in events if isinstance(e, Step)],
                       evals=[(e.data.update, e.data.val_loss) for e in events if isinstance(e, Evaluated)])
