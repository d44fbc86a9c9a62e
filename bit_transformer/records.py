"""The engine's result records: plain pydantic models, no torch, shared by the engine and the MCP server.

The trainer emits them (a plan, then steps, evaluations, checkpoints, growth, a result); the server stores them
in job events and builds its compact views from them, so neither side keeps a copy of the other's fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class GateDecision(BaseModel):
    """The gate's verdict after one observation."""

    triggered: bool
    reason: str | None = None
    ema: dict[str, float] = Field(default_factory=dict, description="Current EMA of every watched value seen so far.")
    observations: int = 0
    in_burn_in: bool = False
    thresholds: dict[str, float] = Field(
        default_factory=dict, description="loss: upper bound; C, S: lower floors."
    )


class TrainPlan(BaseModel):
    micro_batches_per_epoch: int
    accum_steps: int
    updates_per_epoch: int
    epochs: int
    total_updates: int
    scheduler_horizon: int
    precision: Literal["bf16", "fp32"]
    precision_reason: str = ""
    device: str
    compile_requested: bool
    compile_ran: bool = False
    compile_reason: str = "decided when training starts"
    world_size: int = 1
    batch_size: int
    seq_len: int
    params: int
    n_train_windows: int = 0
    warmup_updates: int = 0
    lr_schedule: str = "onecycle"
    bits_per_update: int = 0
    resumed_from: str | None = None  # checkpoint this run continued from (fit(resume=True))
    start_update: int = 0
    resume_note: str | None = None  # e.g. the checkpoint came from a different number of processes
    distributed: str | None = None  # 'ddp' / 'fsdp' when world_size > 1
    # train.time_budget: the horizon above is planned from the probed rate and re-planned (each plan is an event)
    time_budget_s: float | None = None
    budget_clock: str | None = None
    probe_s_per_update: float | None = None
    budget_used_s: float | None = None  # budget spent when this plan was made
    replans: int = 0
    budget_note: str | None = None  # e.g. the budget ran out before the schedule ended
    teacher: str | None = None  # train.teacher: '<run>/<name> sha256:<12 hex>, alpha=.., T=..'


class StepMetrics(BaseModel):
    update: int
    micro_step: int
    epoch: int
    loss: float
    raw_loss: float | None
    compressed_loss: float | None
    lr: float
    compress_prob: float
    ponder_cost: float
    grad_norm: float
    bits_per_s: float
    elapsed_s: float
    eta_s: float | None
    precision: str
    distill_kl: float | None = None  # train.teacher: KL(teacher || student) x T^2, nats per bit; raw_loss: the data CE


class EvalMetrics(BaseModel):
    update: int
    val_loss: float
    val_bpb: float
    gate: GateDecision


class GrowthEvent(BaseModel):
    """A plateau's scale-up request answered in place (``plateau_grow_layers``)."""

    update: int
    layers: int = Field(description="Depth after growing.")
    params_before: int
    params_after: int
    max_logit_change: float = Field(description="Largest logit change on the scale-up probe (new blocks: identities).")


class TrainResult(BaseModel):
    status: Literal["completed", "cancelled", "gated", "failed"]
    reason: str | None = None
    plan: TrainPlan
    updates_done: int
    last_step: StepMetrics | None = None
    last_eval: EvalMetrics | None = None
    checkpoint: str | None = None
    best_val_bpb: float | None = None


class CheckpointInfo(BaseModel):
    """What ``list_checkpoints`` reports and the trainer's 'checkpoint' event carries."""

    name: str
    path: str
    update: int | None = None
    epoch: int | None = None
    val_loss: float | None = None
    val_bpb: float | None = None
    kind: str = "periodic"  # periodic | final | best | cancelled | manual
    created_at: float = 0.0
    params: int | None = None
    is_latest: bool = False
    damaged: str | None = None  # why it cannot be loaded (a truncated or corrupt file), None when intact


class CorpusInfo(BaseModel):
    """Where a loaded corpus came from and how it was split (the torch-free face of ``data.Corpus``)."""

    source_id: str
    content_hash: str = ""
    n_bytes: int
    train_bytes: int
    val_bytes: int
    cache_hit: bool = Field(description="True when the bit cache was reused.")
    cache_note: str | None = Field(None, description="Why an existing cache entry was rebuilt, if it was.")
    load_s: float | None = None


class TelemetrySummary(BaseModel):
    """K/C/S of one forward pass (means over batch rows) plus attention and ACT statistics."""

    K_input: float = Field(description="Negentropy 1 - H2(p1) of the input bits.")
    C_input: float = Field(description="Normalized LZ76 complexity of the input bits.")
    K_pred: float = Field(description="Negentropy of the predicted probabilities P(bit = 1).")
    C_pred: float = Field(description="Normalized LZ76 complexity of the most likely predicted bits.")
    S: float = Field(description="Symbiosis exp(-KL(observed || predicted)) of the next-bit predictions.")
    attention_entropy: list[list[float]] = Field(
        default_factory=list, description="Mean attention entropy in bits, per layer, per head."
    )
    mean_layers_used: float | None = Field(None, description="ACT: mean number of layers a position computed.")
    halting_mean: float | None = Field(None, description="ACT: mean halting probability over positions and layers.")
