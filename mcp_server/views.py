"""Result models of the tools (they become the tools' output schemas).

Engine payloads (TrainPlan, StepMetrics, EvalMetrics, ...) are mirrored with their documented fields
and ``extra='allow'``, so fields the engine adds later still reach the agent without a server change,
and the server never has to import torch just to describe its tools.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bit_transformer.config import ModelConfig, RunConfig

JobStatus = Literal["queued", "starting", "running", "cancelling", "completed", "cancelled", "gated", "failed",
                    "interrupted"]


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class PlanView(Open):
    """The training plan (playbook tasks 1-4, 8): how many updates, which schedule horizon, precision, compile."""

    steps_per_epoch: int | None = Field(None, description="Micro-batches per epoch = len(DataLoader) (task 1).")
    micro_batches_per_epoch: int | None = None
    accum_steps: int | None = None
    updates_per_epoch: int | None = Field(None, description="ceil(micro_batches / accum_steps) + extra_steps.")
    epochs: int | None = None
    total_updates: int | None = None
    scheduler_horizon: int | None = Field(None, description="Updates the LR schedule spans (= total_updates).")
    precision: str | None = Field(None, description="'bf16' or 'fp32' as actually used.")
    device: str | None = None
    compile_requested: bool | None = None
    compile_ran: bool | None = None
    compile_reason: str | None = None
    world_size: int | None = Field(None, description="Training processes (train(processes=N)).")
    distributed: str | None = Field(None, description="'ddp' or 'fsdp' when world_size > 1.")
    resume_note: str | None = Field(None, description="Set when resuming changed something, e.g. the process count.")
    batch_size: int | None = Field(None, description="Per process; an update sees batch_size x accum x world_size.")
    seq_len: int | None = None
    params: int | None = None


class GateView(Open):
    triggered: bool | None = None
    reason: str | None = None
    ema: dict[str, Any] = Field(default_factory=dict)
    observations: int | None = None
    in_burn_in: bool | None = None


class StepView(Open):
    update: int | None = None
    micro_step: int | None = None
    epoch: int | None = None
    loss: float | str | None = None
    raw_loss: float | str | None = None
    compressed_loss: float | str | None = None
    lr: float | None = None
    compress_prob: float | None = None
    ponder_cost: float | str | None = None
    grad_norm: float | str | None = None
    bits_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    precision: str | None = None


class EvalView(Open):
    update: int | None = None
    val_loss: float | str | None = None
    val_bpb: float | str | None = None
    gate: GateView | None = None


class DataView(Open):
    source_id: str | None = None
    n_bytes: int | None = None
    train_bytes: int | None = None
    val_bytes: int | None = None
    cache_hit: bool | None = Field(None, description="True when the bit cache was reused (task 5).")
    cache_note: str | None = None
    load_s: float | None = None


class ProgressView(BaseModel):
    update: int = 0
    total_updates: int | None = None
    fraction: float | None = None
    eta_s: float | None = None
    last_loss: float | str | None = None


class JobView(BaseModel):
    """A job's status, plan, latest metrics and history."""

    job_id: str
    kind: str = "train"
    status: JobStatus
    reason: str | None = Field(None, description="Why the job ended (or is cancelling).")
    active: bool
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    elapsed_s: float | None = None
    request: dict[str, Any] = Field(default_factory=dict, description="steps/epochs/resume/init it was started with.")
    plan: PlanView | None = None
    progress: ProgressView
    last_step: StepView | None = None
    last_eval: EvalView | None = None
    evals: list[EvalView] = Field(default_factory=list, description="Every validation with its gate decision.")
    history: list[dict[str, Any]] = Field(
        default_factory=list, description="Step history (update, loss, lr, compress_prob, ...), downsampled."
    )
    data: DataView | None = None
    loader_len: int | None = Field(None, description="len(DataLoader) measured in the worker.")
    checkpoint: str | None = Field(None, description="The job's newest checkpoint name.")
    checkpoints: list[str] = Field(default_factory=list)
    plateaus: int = Field(0, description="progressive_plateau events seen.")
    growth: list[dict[str, Any]] = Field(
        default_factory=list, description="In-run scale-ups answering plateaus (train.plateau_grow_layers)."
    )
    result: dict[str, Any] | None = Field(None, description="The trainer's TrainResult when finished.")
    runtime: dict[str, Any] | None = Field(None, description="Attention facts, mask cache counters, torch version.")
    log_tail: str | None = Field(None, description="End of worker.log when the job failed.")
    next: str = Field("", description="What to do next.")


class JobSummary(BaseModel):
    job_id: str
    status: JobStatus
    created_at: float
    update: int = 0
    total_updates: int | None = None
    last_loss: float | str | None = None
    val_bpb: float | str | None = None
    checkpoint: str | None = None
    reason: str | None = None


class JobList(BaseModel):
    jobs: list[JobSummary]
    active_job: str | None = Field(None, description="The job currently training, if any.")


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
    plan: PlanView | None = Field(None, description="What train() would run now (epochs from the config).")
    memory: MemoryEstimate | None = None
    data: DataView | None = None
    notes: list[str] = Field(default_factory=list)


class ConfigView(BaseModel):
    config: RunConfig
    derived: DerivedFacts | None = None
    path: str = Field(description="Where the config is stored, relative to the workspace.")


class ChangedField(BaseModel):
    path: str = Field(description="Dotted field path, e.g. model.d_model.")
    old: Any = None
    new: Any = None


class PatchResult(ConfigView):
    changed: list[ChangedField]
    applied: bool = Field(description="False for dry_run=true (nothing was saved).")
    notes: list[str] = Field(default_factory=list, description="How the patch was read: aliases routed, a result "
                             "shape unwrapped.")


class CheckpointView(Open):
    name: str
    update: int | None = None
    epoch: int | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    kind: str | None = None
    created_at: float | None = None
    params: int | None = None
    is_latest: bool = False
    is_current: bool = Field(False, description="Used by evaluate/generate/export_int8.")
    starts_next_run: bool = Field(False, description="The next train(resume=false) starts from it.")


class CheckpointList(BaseModel):
    checkpoints: list[CheckpointView]
    current: str | None = None
    init_next: str | None = None


class LoadResult(BaseModel):
    name: str
    model: ModelConfig
    params: int | None = None
    state: dict[str, Any] = Field(default_factory=dict, description="Training state stored in the checkpoint.")
    changed: list[ChangedField] = Field(default_factory=list, description="Config fields set from the checkpoint.")
    next: str = ""


class ScaleResult(BaseModel):
    checkpoint: str = Field(description="Name of the saved, scaled model (current and next-run start).")
    old_model: ModelConfig
    new_model: ModelConfig
    params_before: int | None = None
    params_after: int | None = None
    report: dict[str, Any] = Field(default_factory=dict, description="The engine's ScaleReport.")
    plan: PlanView | None = Field(None, description="The rebuilt plan for the upcoming run (task 2).")
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
    verdict: GateView | None = None
    telemetry: dict[str, Any] | None = None


class ExportResult(BaseModel):
    name: str
    path: str = Field(description="Relative to the workspace.")
    size_bytes: int
    fp32_size_bytes: int | None = None
    size_ratio: float | None = Field(None, description="fp32 size / int8 size (times smaller).")
    bpb_fp32: float | None = None
    bpb_int8: float | None = None
    bpb_delta: float | None = Field(None, description="Quality change: int8 minus fp32 bits per byte.")
    eval_bytes: int | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None


class TelemetryView(BaseModel):
    """Latest K/C/S telemetry, gate EMA and state."""

    job_id: str | None = None
    update: int | None = None
    gate: GateView | None = None
    last_eval: EvalView | None = None
    telemetry: dict[str, Any] | None = Field(None, description="Latest TelemetrySummary (K, C, S, entropy...).")
    telemetry_source: str | None = None
    last_generation: dict[str, Any] | None = None
    note: str = ""


class DataPrepResult(DataView):
    train_windows: int | None = None
    val_windows: int | None = None
    cache_path: str | None = None


class PlaybookView(Open):
    available: bool
    error: str | None = None
