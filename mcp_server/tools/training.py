"""Job tools: train, get_job, list_jobs, cancel_job."""

from __future__ import annotations

import logging
import os
import time
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ..dashboard import URI as DASHBOARD_URI
from ..events import downsample
from ..jobs import TERMINAL, Job, JobBusyError
from ..views import EvalView, JobList, JobSummary, JobView, PlanView, ProgressView, StepView
from .common import guarded, read_only, writes

log = logging.getLogger(__name__)

JobId = Annotated[str | None, Field(description="Job id such as 'job-0001'; default: the newest job.",
                                    max_length=80)]
WaitS = Annotated[float, Field(ge=0, le=300, description="Seconds to wait for the job to finish, sending "
                               "progress notifications meanwhile; returns early when it ends. Many clients time "
                               "out tool calls near 60 s, so prefer <= 50 and poll again.")]
History = Annotated[int, Field(ge=0, le=2000, description="Max step-history points to return (downsampled).")]


def job_view(job: Job, history: int = 50) -> JobView:
    job.ensure_loaded()
    with job.lock:
        rec = dict(job.record)
        hist = downsample(job.history, history)
        evals = list(job.evals)
        checkpoints = list(job.checkpoints)
    last_step = rec.get("last_step") or {}
    update = int(last_step.get("update") or 0)
    total = job.total_updates()
    end = rec.get("finished_at") or time.time()
    return JobView(
        job_id=job.id, kind=rec.get("kind", "train"), status=rec["status"], reason=rec.get("reason"),
        active=job.active, created_at=rec["created_at"], started_at=rec.get("started_at"),
        finished_at=rec.get("finished_at"), elapsed_s=round(end - (rec.get("started_at") or rec["created_at"]), 3),
        request=rec.get("request") or {}, plan=PlanView.model_validate(rec["plan"]) if rec.get("plan") else None,
        progress=ProgressView(update=update, total_updates=total, fraction=round(update / total, 4) if total else None,
                              eta_s=last_step.get("eta_s") if job.active else 0.0, last_loss=last_step.get("loss")),
        last_step=StepView.model_validate(last_step) if last_step else None,
        last_eval=EvalView.model_validate(rec["last_eval"]) if rec.get("last_eval") else None,
        evals=[EvalView.model_validate(e) for e in evals], history=hist, data=rec.get("data"),
        loader_len=rec.get("loader_len"), checkpoint=rec.get("checkpoint"), checkpoints=checkpoints,
        plateaus=job.plateaus, growth=rec.get("growth", []), result=rec.get("result"), runtime=rec.get("runtime"),
        log_tail=rec.get("log_tail"),
        next=_next_hint(job, rec),
    )


def _next_hint(job: Job, rec: dict[str, Any]) -> str:
    s, ck = rec["status"], rec.get("checkpoint")
    if job.active:
        return f"poll get_job('{job.id}', wait_s=30), or cancel_job('{job.id}') to stop it with a checkpoint"
    if s == "completed":
        return f"evaluate() and generate(prompt=...) now use {ck!r}; export_int8() exports it"
    if s in ("cancelled", "interrupted"):
        return "train(resume=true) continues from " + (repr(ck) if ck else "the run's last checkpoint")
    if s == "gated":
        return ("the safety gate or non-finite losses stopped training: lower train.lr or check the data, "
                "then train again")
    return "read `reason` (and `log_tail`), fix the config with patch_config, then train again"


def register(server: MCPServer, app) -> None:
    jobs = app.jobs

    def find(job_id: str | None) -> Job:
        job = jobs.get(job_id) if job_id else jobs.latest()
        if job is None:
            known = [j.id for j in jobs.all()][-5:]
            if job_id is None:
                raise ToolError("no jobs yet: start one with train(steps=N)")
            raise ToolError(f"unknown job_id {job_id!r}; known jobs: {known or 'none'} (list_jobs() shows all)")
        return job

    async def wait(job: Job, wait_s: float, ctx: Context | None) -> None:
        last = -1.0

        async def progress(j: Job) -> None:
            nonlocal last
            update = float(j.update())
            if ctx is None or update <= last:  # progress values must strictly increase
                return
            last = update
            step = j.record.get("last_step") or {}
            loss = step.get("loss")
            msg = f"{j.id} {j.status}: update {int(update)}/{j.total_updates() or '?'}"
            if isinstance(loss, int | float):
                msg += f", loss {loss:.4f}"
            try:
                await ctx.report_progress(update, j.total_updates(), msg)
            except Exception:  # a client that went away must not fail the call
                log.debug("progress notification failed", exc_info=True)

        await jobs.wait(job, wait_s, progress)

    @server.tool(annotations=writes("Start a training job", destructive=True, open_world=True),
                 meta={"ui": {"resourceUri": DASHBOARD_URI}})  # MCP Apps hosts show the live dashboard
    @guarded
    async def train(
        ctx: Context,
        steps: Annotated[int | None, Field(ge=1, le=10_000_000, description="Optimizer updates to run (total for "
                                           "the run; with resume, counted from the run's start).")] = None,
        epochs: Annotated[int | None, Field(ge=1, le=100_000, description="Epochs instead of steps.")] = None,
        resume: Annotated[bool, Field(description="Continue the newest run from its last checkpoint (its config, "
                                      "optimizer, schedule and data position).")] = False,
        fresh: Annotated[bool, Field(description="Start from a freshly initialised model even if scale_up/"
                                     "load_checkpoint chose a model for the next run.")] = False,
        processes: Annotated[int, Field(ge=1, le=64, description="Data-parallel training processes on this machine, "
                                        "launched with torchrun (train.distributed picks DDP or FSDP2; gloo on CPU, "
                                        "nccl on GPUs). train.batch_size is per process.")] = 1,
        wait_s: WaitS = 0.0,
    ) -> JobView:
        """Start training in a background worker process and return its job id, status and plan (steps per epoch,
        total optimizer updates, precision, compile status). One job at a time. Without steps/epochs the config's
        train.steps or train.epochs apply. Checkpoints go to runs/<run>/; the trainer prunes older periodic
        checkpoints of that run beyond train.keep_checkpoints. processes=N trains data-parallel on N local
        processes; a checkpoint resumes with any process count."""
        if steps is not None and epochs is not None:
            raise ToolError("give steps or epochs, not both")
        _check_processes(processes, app.config())
        busy = jobs.active()
        if busy is not None:
            raise ToolError(f"job {busy.id} is {busy.status} (update {busy.update()}/{busy.total_updates() or '?'}); "
                            f"one training job at a time: wait with get_job('{busy.id}', wait_s=30) or "
                            f"cancel_job('{busy.id}') first")
        request = {**_request(app, steps, epochs, resume, fresh), "processes": processes}
        try:
            job = jobs.start(request)
        except JobBusyError as err:
            raise ToolError(f"job {err} is already running; one training job at a time") from err
        if request.get("init_name"):
            app.ws.update_state(init_checkpoint=None)  # consumed by this run
        await wait(job, wait_s, ctx)
        return job_view(job)

    @server.tool(annotations=read_only("Get a job's status and metrics"))
    @guarded
    async def get_job(ctx: Context, job_id: JobId = None, wait_s: WaitS = 0.0, history: History = 50) -> JobView:
        """Status, plan, latest step/eval metrics, gate decisions and step history of a job; with wait_s, waits
        (sending progress notifications) until it ends or wait_s passes."""
        job = find(job_id)
        await wait(job, wait_s, ctx)
        return job_view(job, history)

    @server.tool(annotations=read_only("List jobs"))
    @guarded
    def list_jobs(limit: Annotated[int, Field(ge=1, le=1000, description="Newest jobs to list.")] = 20) -> JobList:
        """All jobs of this workspace (newest last) with status, progress and checkpoint."""
        out = []
        for job in jobs.all()[-limit:]:
            rec = job.record
            ev = rec.get("last_eval") or {}
            out.append(JobSummary(job_id=job.id, status=rec["status"], created_at=rec["created_at"],
                                  update=job.update(), total_updates=job.total_updates(),
                                  last_loss=(rec.get("last_step") or {}).get("loss"), val_bpb=ev.get("val_bpb"),
                                  checkpoint=rec.get("checkpoint"), reason=rec.get("reason")))
        active = jobs.active()
        return JobList(jobs=out, active_job=active.id if active else None)

    @server.tool(annotations=writes("Cancel a job", destructive=True))
    @guarded
    async def cancel_job(
        ctx: Context,
        job_id: JobId = None,
        wait_s: Annotated[float, Field(ge=0, le=300, description="Seconds to wait for the worker to stop and save "
                                       "its checkpoint.")] = 15.0,
        force: Annotated[bool, Field(description="Kill the worker at once (no checkpoint; last saved one stays).")]
        = False,
    ) -> JobView:
        """Stop a running job at the next step boundary; it saves a consistent, resumable checkpoint
        (train(resume=true) continues). Default job: the active one."""
        job = jobs.get(job_id) if job_id else (jobs.active() or jobs.latest())
        if job is None:
            raise ToolError(f"unknown job_id {job_id!r}" if job_id else "no jobs yet: nothing to cancel")
        if job.status in TERMINAL:
            raise ToolError(f"job {job.id} already ended ({job.status}); nothing to cancel")
        jobs.cancel(job, force=force)
        await wait(job, wait_s, ctx)
        return job_view(job)


def _check_processes(processes: int, cfg) -> None:
    """Refuse process counts this machine cannot run (one core, or one GPU, per process)."""
    if processes == 1:
        return
    import torch

    gpus = torch.cuda.device_count() if cfg.train.device != "cpu" else 0
    if gpus:
        if processes > gpus:
            raise ToolError(f"processes={processes} but this machine has {gpus} GPU(s): use processes<={gpus}, "
                            "one per GPU")
        return
    cores = os.cpu_count() or 1
    if processes > cores:
        raise ToolError(f"processes={processes} exceeds this machine's {cores} CPU core(s): use processes<={cores} "
                        "(each process needs at least one core)")


def _request(app, steps: int | None, epochs: int | None, resume: bool, fresh: bool) -> dict[str, Any]:
    cfg = app.config()
    if resume:
        prev = next((j for j in reversed(app.jobs.all()) if j.record.get("checkpoint")), None)
        if prev is None:
            raise ToolError("nothing to resume: no earlier job saved a checkpoint; start with train(steps=N)")
        req = prev.record.get("request") or {}
        if steps is None and epochs is None:
            steps, epochs = req.get("steps"), req.get("epochs")
        return {"config": prev.record["config"], "steps": steps, "epochs": epochs, "resume": True,
                "run": prev.run, "resumes": prev.id, "init_checkpoint": None}
    init_name = None if fresh else app.ws.load_state().init_checkpoint
    init_path = None
    if init_name:
        name, path = app.engine.resolve(init_name)
        meta_model = app.engine.checkpoint_meta(path)["config"]["model"]
        if meta_model != cfg.model.model_dump(mode="json"):
            raise ToolError(f"the next run was set to start from {name!r} (by scale_up/load_checkpoint), but "
                            "config.model has changed since; load_checkpoint(name) again, or pass fresh=true to "
                            "train a new model of the current config")
        init_name, init_path = name, str(path)
    cfg = app.ws.confine_config(cfg, check_files=True)  # the worker gets absolute paths inside the workspace
    return {"config": cfg.model_dump(mode="json"), "steps": steps, "epochs": epochs, "resume": False,
            "init_checkpoint": init_path, "init_name": init_name}
