"""Job tools: train, get_job, list_jobs, cancel_job. Results are compact (budget.py); detail is asked for."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from bit_transformer.records import EvalMetrics, TrainPlan

from ..budget import EVALS_CAP, HISTORY_CAP
from ..compare import RunTable, compare
from ..dashboard import URI as DASHBOARD_URI
from ..events import downsample
from ..job import TrainRequest
from ..jobs import TERMINAL, Job, JobBusyError
from ..playbook_job import owns as is_playbook_run
from ..views import EvalBrief, GateBrief, JobList, JobSummary, JobView, PlanDetail, ProgressView, StepBrief
from .common import WaitS, guarded, read_only, writes
from .compact import reply

log = logging.getLogger(__name__)

LN2 = math.log(2.0)
FRAME_BITS = 9
Section = Literal["plan", "last_step", "evals", "data", "result", "request", "runtime", "checkpoints", "growth",
                  "log_tail", "loader_len", "plateaus", "all"]
SECTIONS: tuple[str, ...] = tuple(a for a in Section.__args__ if a != "all")  # type: ignore[attr-defined]
REQUEST_KEYS = ("steps", "epochs", "resume", "run", "resumes", "init_name", "processes")

JobId = Annotated[str | None, Field(description="Default: the newest job.", max_length=80)]
History = Annotated[int, Field(ge=0, le=HISTORY_CAP, description="Add up to N step points (downsampled).")]
Include = Annotated[list[Section], Field(description="Detail sections to add.")]


def _bpb(loss: float | None) -> float | None:
    return None if loss is None or not math.isfinite(loss) else round(loss * FRAME_BITS / LN2, 4)


def _round(value: float | None, digits: int = 5) -> float | None:
    return round(value, digits) if value is not None and math.isfinite(value) else value


def _gate(ev: EvalMetrics | None) -> GateBrief | None:
    if ev is None:
        return None
    if ev.gate.triggered:
        return GateBrief(state="triggered", reason=ev.gate.reason)
    return GateBrief(state="burn-in" if ev.gate.in_burn_in else "ok")


def job_view(job: Job, *, history: int = 0, include: list[str] | tuple[str, ...] = (),
             queue: list[Job] = ()) -> JobView:
    """The compact view of a job's record plus the detail sections asked for (the records themselves); ``queue``
    (the queued jobs in start order) gives a queued job its position."""
    job.ensure_loaded()
    with job.lock:
        rec = job.record.model_copy()  # shallow: the lists are copied below, under the lock
        hist = downsample(rec.history, history) if history else None
        evals = list(rec.evals[-EVALS_CAP:]) if "evals" in include else None
        checkpoints = [job.qualify(c.name) for c in rec.checkpoints]
        growth = list(rec.growth)
    step, ev = rec.last_step, rec.last_eval
    update = step.update if step else 0
    total = rec.plan.total_updates if rec.plan else None
    end = rec.finished_at or time.time()
    eta = (step.eta_s if step else None) if job.active else 0.0
    view = JobView(
        job_id=job.id, status=rec.status, active=job.active, reason=rec.reason,
        progress=ProgressView(update=update, total_updates=total,
                              fraction=round(update / total, 4) if total else None,
                              eta_s=round(eta, 1) if eta is not None else None),
        step=StepBrief(update=update, loss=_round(step.loss),
                       bpb=_bpb(step.raw_loss if step.raw_loss is not None else step.loss), lr=step.lr,
                       bits_per_s=round(step.bits_per_s) if math.isfinite(step.bits_per_s) else None)
        if step else None,
        eval=EvalBrief(update=ev.update, val_bpb=_round(ev.val_bpb, 4), val_loss=_round(ev.val_loss)) if ev else None,
        gate=_gate(ev), checkpoint=rec.checkpoint, run=job.run,
        elapsed_s=round(end - (rec.started_at or rec.created_at), 1), next=next_hint(job),
        queue_position=next((i + 1 for i, q in enumerate(queue) if q.id == job.id), None),
    )
    sections: dict[str, Any] = {
        "plan": lambda: _plan(job, rec.plan),
        "last_step": lambda: step,
        "evals": lambda: evals,
        "data": lambda: rec.data,
        # The outcome only: plan, last_step and last_eval are their own sections (not repeated here).
        "result": lambda: rec.result and {**rec.result.model_dump(exclude={"plan", "last_step", "last_eval"}),
                                          "checkpoint": _named(job, rec.result.checkpoint)},
        "request": lambda: rec.request.model_dump(include=set(REQUEST_KEYS), exclude_none=True),
        "runtime": lambda: rec.runtime,
        "checkpoints": lambda: checkpoints,
        "growth": lambda: growth,
        "log_tail": lambda: rec.log_tail,
        "loader_len": lambda: rec.loader_len,
        "plateaus": lambda: rec.plateaus,
    }
    for name in include:
        value = sections[name]()
        if value is not None:
            setattr(view, name, value)
    if hist is not None:
        view.history = hist
    return view


def _named(job: Job, path: str | None) -> str | None:
    """A checkpoint path as the '<run>/<name>' agents use (no absolute paths in results)."""
    if isinstance(path, str) and ("/" in path or "\\" in path) and not path.startswith(job.run + "/"):
        return job.qualify(path)
    return path


def _plan(job: Job, plan: TrainPlan | None) -> PlanDetail | None:
    if plan is None:
        return None
    return PlanDetail.model_validate({**plan.model_dump(), "resumed_from": _named(job, plan.resumed_from)})


def next_hint(job: Job) -> str:
    s, ck = job.status, job.record.checkpoint
    if s == "queued":
        return f"starts when the jobs ahead end; get_job('{job.id}', wait_s=50) follows it, cancel_job removes it"
    if job.active:
        return f"get_job('{job.id}', wait_s=50) again, or cancel_job('{job.id}') to stop it with a checkpoint"
    if s == "completed":
        return f"evaluate() and generate(prompt=...) now use {ck!r}; export_int8() exports it"
    if s in ("cancelled", "interrupted"):
        return f"train(resume='{job.run}') continues from " + (repr(ck) if ck else "the run's last checkpoint")
    if s == "gated":
        return ("the safety gate or non-finite losses stopped training: lower train.lr or check the data, "
                "then train again")
    return "read `reason` (get_job(include=['log_tail']) for the worker log), fix the config, then train again"


def _includes(include: list[str]) -> tuple[str, ...]:
    return SECTIONS if "all" in include else tuple(dict.fromkeys(include))


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
            step = j.record.last_step
            msg = f"{j.id} {j.status}: update {int(update)}/{j.total_updates() or '?'}"
            if step is not None:
                msg += f", loss {step.loss:.4f}"
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
        steps: Annotated[int | None, Field(ge=1, le=10_000_000, description="Optimizer updates in all (with "
                                           "resume: from the run's start).")] = None,
        epochs: Annotated[int | None, Field(ge=1, le=100_000, description="Epochs instead of steps.")] = None,
        minutes: Annotated[float | None, Field(gt=0, le=10_080, description="Train this long instead; the LR "
                                               "schedule ends on time.")] = None,
        resume: Annotated[bool | Annotated[str, Field(max_length=80)], Field(
            description="Continue a run from its last checkpoint (config, optimizer, schedule, data position): "
            "true = the newest, or a run/job id.")] = False,
        fresh: Annotated[bool, Field(description="New weights even if scale_up/load_checkpoint chose the next "
                                     "run's model.")] = False,
        processes: Annotated[int, Field(ge=1, le=64, description="Data-parallel processes (torchrun, per "
                                        "train.distributed); batch_size is per process.")] = 1,
        queue: Annotated[bool, Field(description="false: fail instead of queueing.")] = True,
        wait_s: WaitS = 0.0,
    ) -> Annotated[CallToolResult, JobView]:
        """Start training in a background worker (one at a time, later ones queue; it outlives this client) and
        return its job_id at once; without steps/epochs/minutes the config's apply. Then poll get_job(job_id,
        wait_s=50) until active is false. Common mistake: a new train() to continue a stopped run: use
        resume=<run or job id>."""
        if sum(x is not None for x in (steps, epochs, minutes)) > 1:
            raise ToolError("give one of steps, epochs or minutes")
        _check_processes(processes, app.config())
        request = _request(app, steps, epochs, resume, fresh, processes, minutes)
        try:
            job = jobs.start(request, queue_ok=queue)
        except JobBusyError as err:
            busy = jobs.get(str(err))
            where = f" (update {busy.update()}/{busy.total_updates() or '?'})" if busy else ""
            raise ToolError(f"job {err} is active{where}; one training job at a time and queue=false: wait with "
                            f"get_job('{err}', wait_s=50), cancel_job('{err}'), or train(queue=true) to run after "
                            "it") from err
        if request.init_name:
            app.ws.update_state(init_checkpoint=None)  # consumed by this run
        await wait(job, wait_s, ctx)
        return reply(job_view(job, queue=jobs.queued()))

    @server.tool(annotations=read_only("Get a job's status"))
    @guarded
    async def get_job(ctx: Context, job_id: JobId = None, wait_s: WaitS = 0.0, history: History = 0,
                      include: Include = []) -> Annotated[CallToolResult, JobView]:  # noqa: B006 - never mutated
        """Poll a job with wait_s=50 until active is false: progress (update/total, eta_s), step (loss, bpb,
        bits_per_s), eval (val_bpb), gate, checkpoint, next. Ask include/history once at the end, not while
        polling; every event: bt://jobs/{job_id}/metrics. A playbook_run id gives its PASS/FAIL table."""
        if is_playbook_run(job_id):  # a playbook_run job: include=['result'] gives every check
            from .playbook_run import poll

            return await poll(app, job_id, wait_s=wait_s, detail=bool(include), ctx=ctx)
        job = find(job_id)
        await wait(job, wait_s, ctx)
        return reply(job_view(job, history=history, include=_includes(include), queue=jobs.queued()))

    @server.tool(annotations=read_only("List jobs"))
    @guarded
    def list_jobs(limit: Annotated[int, Field(ge=1, le=1000, description="Newest jobs to list.")] = 10
                  ) -> Annotated[CallToolResult, JobList]:
        """The newest jobs (newest last; playbook_run runs too): status, update/total, last val_bpb, checkpoint,
        why it ended. Use to find a job id or run to resume, e.g. after a restart."""
        every = [(job.record.created_at, job) for job in jobs.all()]
        every += [(run.created_at, run) for run in app.playbook_runs.all()]
        out = []
        for _, job in sorted(every, key=lambda pair: pair[0])[-limit:]:
            if not isinstance(job, Job):  # a playbook run: its scope instead of training numbers
                out.append(JobSummary(job_id=job.job_id, status=job.status,
                                      reason=_short(f"playbook {job.target} ({job.scale})"
                                                    + (f": {job.reason}" if job.reason else ""))))
                continue
            rec = job.record
            out.append(JobSummary(job_id=job.id, status=rec.status, update=job.update(),
                                  total_updates=job.total_updates(),
                                  val_bpb=_round(rec.last_eval.val_bpb, 4) if rec.last_eval else None,
                                  checkpoint=rec.checkpoint, reason=_short(rec.reason)))
        active = jobs.active()
        waiting = [j.id for j in jobs.queued()]
        return reply(JobList(jobs=out, total=len(every), active_job=active.id if active and active.status != "queued"
                             else None, queued=waiting or None))

    @server.tool(annotations=writes("Cancel a job", destructive=True))
    @guarded
    async def cancel_job(
        ctx: Context,
        job_id: Annotated[str | None, Field(max_length=80, description="Default: the active job.")] = None,
        wait_s: Annotated[float, Field(ge=0, le=300, description="Seconds to wait for it to stop.")] = 15.0,
        force: Annotated[bool, Field(description="Kill the worker at once (no checkpoint; last saved one stays).")]
        = False,
    ) -> Annotated[CallToolResult, JobView]:
        """Stop a job (any server's) at the next step boundary with a resumable checkpoint; a queued job is
        dropped. Good result: status 'cancelled'; train(resume=<run>) continues it. force only for a worker that
        does not stop."""
        if is_playbook_run(job_id):
            from .playbook_run import cancel

            return await cancel(app, job_id, wait_s=wait_s, ctx=ctx)
        job = jobs.get(job_id) if job_id else (jobs.active() or jobs.latest())
        if job is None:
            raise ToolError(f"unknown job_id {job_id!r}" if job_id else "no jobs yet: nothing to cancel")
        if job.status in TERMINAL:
            raise ToolError(f"job {job.id} already ended ({job.status}); nothing to cancel")
        jobs.cancel(job, force=force)
        await wait(job, wait_s, ctx)
        return reply(job_view(job, queue=jobs.queued()))

    _compare_tool(server, app)


def _compare_tool(server: MCPServer, app) -> None:
    @server.tool(annotations=read_only("Compare runs"))
    @guarded
    def compare_runs(
        last: Annotated[int, Field(ge=1, le=50, description="Newest N jobs.")] = 5,
        jobs: Annotated[list[str], Field(description="Job ids instead.")] = [],  # noqa: B006 - never mutated
    ) -> Annotated[CallToolResult, RunTable]:
        """Jobs side by side: differing config, params, updates, CPU minutes, final/best val_bpb."""
        every = app.jobs.all()
        if jobs:
            jobs = jobs[:50]
            known = {j.id: j for j in every}
            missing = [k for k in jobs if k not in known]
            if missing:
                raise ToolError(f"unknown job ids {missing}; list_jobs() shows the jobs")
            chosen = [known[k] for k in dict.fromkeys(jobs)]
        else:
            chosen = every[-last:]
        if not chosen:
            raise ToolError("no jobs yet: start one with train(steps=N)")
        return reply(compare(chosen))


def _short(text: str | None, n: int = 160) -> str | None:
    return text if text is None or len(text) <= n else text[: n - 3] + "..."


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


def resume_source(app, resume: bool | str) -> Job:
    """The job whose run ``resume`` continues: true = the newest run with a checkpoint, else a job id or run."""
    with_ck = [j for j in app.jobs.all() if j.record.checkpoint]
    if resume is True:
        if not with_ck:
            raise ToolError("nothing to resume: no earlier job saved a checkpoint; start with train(steps=N)")
        return with_ck[-1]
    key = str(resume).strip()
    job = app.jobs.get(key)
    run = job.run if job is not None else key
    same_run = [j for j in with_ck if j.run == run]
    if not same_run:
        runs = sorted({j.run for j in with_ck})
        what = f"job {key!r} (run {run!r})" if job is not None else f"run or job {key!r}"
        raise ToolError(f"nothing to resume for {what}: no checkpoint saved; runs with checkpoints: "
                        f"{runs or 'none'} (list_jobs() shows job ids and runs)")
    return same_run[-1]  # the run's newest job carries its latest config and request


def _with_budget(config: dict[str, Any], steps: int | None, epochs: int | None, minutes: float | None) -> dict:
    """minutes= sets train.time_budget; explicit steps/epochs clear it (the budget would override them)."""
    if minutes is None and steps is None and epochs is None:
        return config
    return {**config, "train": {**config["train"], "time_budget": None if minutes is None else minutes * 60.0}}


def _request(app, steps: int | None, epochs: int | None, resume: bool | str, fresh: bool,
             processes: int = 1, minutes: float | None = None) -> TrainRequest:
    """The job's TrainRequest (the job manager adds where it runs: run, out_dir, cache_dir)."""
    cfg = app.config()
    if isinstance(resume, str) and resume.strip().lower() in ("true", "false", ""):
        resume = resume.strip().lower() == "true"
    if resume:
        prev = resume_source(app, resume)
        req = prev.record.request
        config = _with_budget(req.config, steps, epochs, minutes)
        if steps is None and epochs is None:
            steps, epochs = req.steps, req.epochs
        return TrainRequest(config=config, steps=steps, epochs=epochs, resume=True, run=prev.run,
                            resumes=prev.id, processes=processes)
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
    cfg = app.engine.teacher(app.ws.confine_config(cfg, check_files=True))  # the worker gets absolute paths
    return TrainRequest(config=_with_budget(cfg.model_dump(mode="json"), steps, epochs, minutes), steps=steps,
                        epochs=epochs, init_checkpoint=init_path,
                        init_name=init_name, processes=processes)
