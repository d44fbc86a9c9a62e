"""Result models of the tools: compact views (each default result fits the 2 KB budget of ``budget.py``).

They become the tools' output schemas, shrunk to field names and types (``tools/compact.py``). Views with
``extra='allow'`` (``Open``) take detail sections an agent asked for explicitly; those sections are the
engine's records themselves (``bit_transformer.records``: TrainPlan, StepMetrics, EvalMetrics, GateDecision,
CorpusInfo, TrainResult), taken from the job record (``job.py``), never copies of their fields here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from bit_transformer.records import CorpusInfo, EvalMetrics, GateDecision, TrainPlan

from .job import JobStatus

Num = float | str  # a number, or "nan" / "inf" / "-inf" as a string (JSON has no NaN; see compact.py)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PlanDetail(TrainPlan):
    """The engine's TrainPlan, plus the playbook's name for the loader length (task 1)."""

    @computed_field(description="Micro-batches per epoch = len(DataLoader) (task 1).")
    @property
    def steps_per_epoch(self) -> int:
        return self.micro_batches_per_epoch


class ProgressView(BaseModel):
    update: int = 0
    total_updates: int | None = None
    fraction: float | None = None
    eta_s: float | None = Field(None, description="Seconds left (training clock); 0 once ended.")


class StepBrief(BaseModel):
    """The latest optimizer update."""

    update: int
    loss: Num | None = Field(None, description="Training loss (nats per bit).")
    bpb: float | None = Field(None, description="The same in bits per byte (loss x 9 / ln 2).")
    lr: float | None = None
    bits_per_s: float | None = Field(None, description="Training throughput, bits per second.")


class EvalBrief(BaseModel):
    """The latest validation."""

    update: int
    val_bpb: Num | None = None
    val_loss: Num | None = None


class GateBrief(BaseModel):
    state: Literal["burn-in", "ok", "triggered"]
    reason: str | None = None


class JobView(Open):
    """A job, compact: what an agent needs to decide its next call. Detail sections (plan, last_step, evals,
    history, data, result, request, runtime, checkpoints, growth, log_tail, loader_len, plateaus) are added
    only when asked for with get_job(include=[...], history=N)."""

    job_id: str
    status: JobStatus
    active: bool
    reason: str | None = Field(None, description="Why the job ended (or is cancelling).")
    progress: ProgressView
    step: StepBrief | None = None
    eval: EvalBrief | None = None
    gate: GateBrief | None = None
    checkpoint: str | None = Field(None, description="The job's newest checkpoint, '<run>/<name>'.")
    run: str | None = Field(None, description="The run (runs/<run>/) the job trains; train(resume=<run>) continues.")
    elapsed_s: float | None = None
    queue_position: int | None = Field(None, description="1 = starts next (status 'queued' only).")
    next: str = Field("", description="What to do next.")


class JobSummary(BaseModel):
    job_id: str
    status: JobStatus
    update: int = 0
    total_updates: int | None = None
    val_bpb: Num | None = None
    checkpoint: str | None = None
    reason: str | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]
    total: int = Field(0, description="Jobs in the workspace (the newest `limit` are listed).")
    active_job: str | None = Field(None, description="The job currently training, if any.")
    queued: list[str] | None = Field(None, description="Queued jobs, in the order they start.")


class MemoryEstimate(BaseModel):
    """Rough training memory (MiB): fp32 weights + grads + AdamW moments + activations."""

    weights_mb: float
    grads_mb: float
    optimizer_mb: float
    activations_mb: float
    total_mb: float
    note: str


class DerivedFacts(BaseModel):
    params: int | None = Field(None, description="Parameter count of the configured model.")
    seq_len: int = Field(description="Training window length in bits (max_seq_len rounded down to whole bytes).")
    train_windows: int | None = Field(None, description="Training windows in the configured data.")
    plan: PlanDetail | None = Field(None, description="What train() would run now (epochs from the config).")
    memory: MemoryEstimate | None = None
    data: CorpusInfo | None = None
    notes: list[str] = Field(default_factory=list)
    s_per_update: float | None = Field(None, description="Measured seconds per update on this machine (get_config).")
    eta_s: float | None = Field(None, description="Seconds the plan (steps, epochs or time_budget) would take.")


class PlanBrief(Open):
    """The headline numbers of a training plan (the full plan: get_job(include=["plan"]))."""

    steps_per_epoch: int | None = None
    updates_per_epoch: int | None = None
    total_updates: int | None = None
    scheduler_horizon: int | None = None
    warmup_updates: int | None = None
    precision: str | None = None
    params: int | None = None


PLAN_BRIEF = tuple(PlanBrief.model_fields)


def plan_brief(plan: PlanDetail | None) -> PlanBrief | None:
    if plan is None:
        return None
    return PlanBrief(**{k: getattr(plan, k) for k in PLAN_BRIEF})


class DerivedView(Open):
    """Facts computed from a config (full estimate: get_config(detail=true))."""

    params: int | None = None
    seq_len: int | None = None
    train_windows: int | None = None
    plan: PlanBrief | None = None
    memory_mb: int | None = Field(None, description="Rough training memory per micro-batch (MiB).")
    s_per_update: float | None = None
    eta_s: float | None = None
    notes: list[str] | None = None


def derived_view(facts: DerivedFacts | None, detail: bool = False) -> DerivedView | None:
    if facts is None:
        return None
    if detail:
        return DerivedView.model_validate(facts.model_dump(mode="json"))
    plan = plan_brief(facts.plan)
    if plan is not None:
        plan.params = None  # the view's own `params` already says it
    return DerivedView(params=facts.params, train_windows=facts.train_windows,  # seq_len: config's max_seq_len
                       plan=plan, memory_mb=round(facts.memory.total_mb) if facts.memory else None,
                       s_per_update=facts.s_per_update, eta_s=facts.eta_s, notes=facts.notes or None)


class ConfigView(Open):
    config: dict[str, Any] = Field(description="The RunConfig: sections model, train, data; without the fields "
                                   "inert under its settings unless detail=true (whole: bt://config).")
    derived: DerivedView | None = None
    choices: dict[str, Any] | None = Field(None, description="Allowed values of the enum fields by section, e.g. "
                                           "choices.data.source.")


class ChangedField(BaseModel):
    path: str = Field(description="Dotted field path, e.g. model.d_model.")
    old: Any
    new: Any  # required, so a field reset to null shows "new": null rather than no "new" at all


MAX_CHANGES = 12  # patch_config lists at most this many changed fields (changed_count has them all)


class PatchResult(Open):
    applied: bool = Field(description="False for dry_run=true (nothing was saved).")
    changed: list[ChangedField]
    changed_count: int = 0
    notes: list[str] | None = Field(None, description="How the patch was read: aliases routed, a result shape "
                                    "unwrapped.")
    derived: DerivedView | None = None
    config: dict[str, Any] | None = Field(None, description="The whole new config (include_config=true).")


class CheckpointView(BaseModel):
    name: str
    update: int | None = None
    val_bpb: float | None = None
    kind: str | None = None
    current: bool | None = Field(None, description="true: the model evaluate/generate/export_int8 use.")
    starts_next_run: bool | None = Field(None, description="true: the next train() starts from it.")
    damaged: str | None = Field(None, description="Why it cannot be loaded (a truncated or corrupt file).")


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointView] = Field(description="Newest last.")
    total: int = 0
    current: str | None = None
    init_next: str | None = None


class ExportView(BaseModel):
    name: str
    path: str = Field(description="Relative to the workspace.")
    size_bytes: int
    created_at: float | None = None
    checkpoint: str | None = None


class ExportList(BaseModel):
    exports: list[ExportView] = Field(description="Newest last.")
    total: int = 0


class DeleteResult(BaseModel):
    deleted: list[str] = Field(description="What was removed ('runs/<run>', '<run>/<checkpoint>', 'exports/<name>').")
    freed_bytes: int = 0
    dry_run: bool = False
    next: str = ""


class LoadResult(BaseModel):
    name: str
    model: dict[str, Any] = Field(description="The checkpoint's config.model (now config.model too).")
    params: int | None = None
    state: dict[str, Any] = Field(default_factory=dict, description="Training state stored in the checkpoint.")
    changed: list[ChangedField] = Field(default_factory=list, description="Config fields set from the checkpoint.")
    next: str = ""


class ScaleResult(BaseModel):
    checkpoint: str = Field(description="Name of the saved, scaled model (current and next-run start).")
    old_model: dict[str, Any] = Field(description="Shape before: layers, d_model, nhead, dim_feedforward.")
    new_model: dict[str, Any] = Field(description="Shape after.")
    params_before: int | None = None
    params_after: int | None = None
    exact: list[str] | None = Field(None, description="What grew exactly (function-preserving).")
    approximate: list[str] | None = Field(None, description="What grew approximately.")
    max_logit_change: float | None = None
    plan: PlanBrief | None = Field(None, description="The rebuilt plan for the upcoming run (task 2).")
    next: str = ""


class EvalResult(Open):
    source: str = Field(description="'val', 'train' or 'text'.")
    checkpoint: str | None = None
    bits_per_byte: float | None = None
    data_bits_per_byte: float | None = None
    parity_bits_per_byte: float | None = None
    bit_accuracy: float | None = None
    loss: float | None = None
    n_bytes: int | None = None
    compressors: dict[str, float] = Field(default_factory=dict)


class GenerateResult(Open):
    text: str
    prompt: str
    new_bytes: int
    parity_ok: bool
    seed: int | None = None
    checkpoint: str | None = None
    verdict: GateDecision | None = None
    telemetry: dict[str, Any] | None = None
    stopped: str | None = None


class ExportResult(BaseModel):
    name: str
    path: str = Field(description="Relative to the workspace.")
    size_bytes: int
    fp32_size_bytes: int | None = None
    size_ratio: float | None = Field(None, description="fp32 size / export size (times smaller).")
    bpb_fp32: float | None = None
    bpb_int8: float | None = None
    bpb_delta: float | None = Field(None, description="Quality change: export minus fp32 bits per byte.")
    eval_bytes: int | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None


class TelemetryView(BaseModel):
    """Latest K/C/S telemetry, gate EMA and state."""

    job_id: str | None = None
    update: int | None = None
    gate: GateDecision | None = None
    last_eval: EvalMetrics | None = None
    telemetry: dict[str, Any] | None = Field(None, description="Latest TelemetrySummary (K, C, S, entropy...).")
    telemetry_source: str | None = None
    last_generation: dict[str, Any] | None = None
    note: str = ""


class DataPrepResult(CorpusInfo):
    train_windows: int | None = None
    val_windows: int | None = None
    cache_path: str | None = None


class PlaybookView(Open):
    available: bool
    error: str | None = None


class RunProgress(BaseModel):
    done: int = Field(0, description="Recipes finished.")
    total: int = 0
    passed: int = 0
    current: str | None = Field(None, description="The task running now.")


class PlaybookRunView(BaseModel):
    """A playbook run (playbook_run, or get_job on its id): where it runs, progress, then the PASS/FAIL table."""

    job_id: str
    status: Literal["running", "completed", "cancelled", "failed"]
    active: bool
    where: str = Field(description="The scratch workspace it runs on; the user's work is untouched.")
    runs: str = Field(description="What runs: phase or task, scale, recipe count.")
    progress: RunProgress
    reason: str | None = None
    summary: str | None = Field(None, description="'13/13 recipes passed' (and how many checks are not shown).")
    table: list[str] | None = Field(None, description="A row per recipe (id, PASS/FAIL, checks passed, seconds), "
                                    "then its checks: 'step: path op expected (got measured)'; '!!' = failed.")
    report: str = Field(description="The full JSON report, relative to the workspace.")
    elapsed_s: float | None = None
    next: str = ""
