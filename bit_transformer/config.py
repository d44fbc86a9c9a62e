"""Typed configuration for a BitTransformerLM run.

Field names follow the playbook's flags (``layers``, ``d_model``, ``chunk_size``, ``accum_steps``,
``amp``, ...), so a playbook command line maps one-to-one onto these models. Every model forbids
unknown fields: a typo such as ``d_modle`` is an error that names the field, never silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .budget import parse_duration

FRAME_BITS = 9  # 8 data bits + 1 even-parity bit per byte


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Architecture of a BitTransformerLM."""

    layers: int = Field(4, ge=1, le=256, description="Number of transformer blocks.")
    d_model: int = Field(128, ge=8, le=16384, description="Width of the residual stream.")
    nhead: int = Field(4, ge=1, description="Attention heads; must divide d_model.")
    dim_feedforward: int | None = Field(
        None, ge=8, description="Hidden width of the feed-forward layer; defaults to 4 * d_model."
    )
    max_seq_len: int = Field(
        288, ge=FRAME_BITS, le=1 << 20, description="Longest input in bits (288 bits = 32 bytes)."
    )
    causal: bool = Field(True, description="Causal (next-bit) attention; false gives bidirectional.")
    chunk_size: int | None = Field(
        None, ge=1, description="Attend within chunks of this many bits (plus `overlap`); None = full."
    )
    overlap: int = Field(0, ge=0, description="Extra positions before each chunk that it may attend to.")
    full_attn_logging: bool | None = Field(
        None,
        description="Return stitched T x T attention maps with telemetry. Defaults to off when "
        "chunk_size is set (they cost O(T^2) memory), on otherwise.",
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the embeddings and residual branches (0 by default: at small budgets it costs more "
        "than it regularises).",
    )
    attn_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Dropout on the attention weights inside SDPA. Default 0: on CPU any value > 0 sends "
        "attention from the fused kernel to the math path (about 6x slower training).",
    )
    arch: Literal["flat", "framed"] = Field(
        "framed",
        description="flat: one sequence position per bit (9 per byte). framed: one trunk position per 9-bit "
        "frame, embedded from its bits, with an exact per-bit head (~9x fewer positions; max_seq_len, "
        "chunk_size and overlap must be multiples of 9).",
    )
    reversible: bool = Field(False, description="RevNet-style reversible blocks (activation memory flat in depth).")
    act: bool = Field(False, description="Adaptive computation time: positions halt after a variable depth.")
    act_threshold: float = Field(0.99, gt=0.0, le=1.0, description="Cumulative halting mass that stops a position.")
    ponder_weight: float = Field(0.01, ge=0.0, description="Weight of the ACT ponder cost in the loss.")
    checkpointing: bool = Field(False, description="Recompute each block's activations in backward.")
    block: Literal["classic", "modern"] = Field(
        "modern",
        description="classic: LayerNorm, learned absolute positions, GELU, biases. modern: RMSNorm, rotary "
        "positions with QK-norm, ReLU^2 MLP, no biases, zero-initialised residual writers (flat models keep the "
        "position-in-frame embedding). Needs an even head_dim.",
    )
    mlp: Literal["auto", "gelu", "relu2", "swiglu"] = Field(
        "auto",
        description="MLP activation; auto = gelu for block='classic', relu2 for 'modern'. swiglu adds a gate "
        "matrix (3 instead of 2 d_model x dim_feedforward weights).",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        problems: list[str] = []
        if self.d_model % self.nhead:
            problems.append(
                f"d_model ({self.d_model}) must be divisible by nhead ({self.nhead}); "
                f"e.g. nhead={_largest_divisor(self.d_model, self.nhead)}"
            )
        if self.block == "modern" and self.head_dim % 2:
            even = _largest_divisor(self.d_model // 2, self.nhead)
            problems.append(f"block='modern' rotates pairs of head dims: head_dim = d_model / nhead "
                            f"({self.head_dim}) must be even, e.g. nhead={even}")
        if self.chunk_size is None and self.overlap:
            problems.append("overlap needs chunk_size: set chunk_size or set overlap to 0")
        if self.chunk_size is not None and self.overlap >= self.chunk_size:
            problems.append(
                f"overlap ({self.overlap}) must be smaller than chunk_size ({self.chunk_size})"
            )
        if self.arch == "framed" and not self.causal:
            problems.append("arch='framed' (the default) predicts each frame from the frames before it, so it needs "
                            "causal=true: for a bidirectional model set arch='flat' (a denoising model is "
                            "arch='flat', causal=false, train.objective='denoise')")
        if self.arch == "framed":
            for name in ("max_seq_len", "chunk_size", "overlap"):
                value = getattr(self, name)
                if value is not None and value % FRAME_BITS:
                    fix = FRAME_BITS * max(1, round(value / FRAME_BITS))
                    problems.append(f"arch='framed' (the default) works on whole 9-bit frames: {name} ({value}) "
                                    f"must be a multiple of {FRAME_BITS}, e.g. {name}={fix}; or set arch='flat' "
                                    f"(one position per bit)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ff_dim(self) -> int:
        return self.dim_feedforward or 4 * self.d_model

    @property
    def mlp_kind(self) -> str:
        """Resolved `mlp`: the activation the MLP uses."""
        if self.mlp == "auto":
            return "relu2" if self.block == "modern" else "gelu"
        return self.mlp

    @property
    def attn_logging(self) -> bool:
        """Resolved `full_attn_logging` (playbook task 12: off by default in chunked runs)."""
        if self.full_attn_logging is None:
            return self.chunk_size is None
        return self.full_attn_logging

    @property
    def head_dim(self) -> int:
        return self.d_model // self.nhead


# The ModelConfig sizes scale.scale_up can grow (the scale-up command's flags, the workflow's check).
GROWABLE = ("layers", "d_model", "dim_feedforward", "nhead", "max_seq_len")


class SafetyConfig(_Strict):
    """The EMA + burn-in gate (playbook task 7)."""

    decay: float = Field(0.9, ge=0.0, lt=1.0, description="EMA decay.")
    burn_in: int = Field(10, ge=0, description="Observations during which the gate never triggers.")
    loss_threshold: float | None = Field(
        None,
        gt=0.0,
        description="Upper bound on the EMA of validation loss (nats per bit). Default: a uniform "
        "predictor's loss, ln 2, times 1.05, i.e. the model is no better than guessing.",
    )
    c_floor: float = Field(0.3, ge=0.0, le=1.0, description="Lower floor for LZ complexity C.")
    s_floor: float = Field(0.5, ge=0.0, le=1.0, description="Lower floor for symbiosis S.")


class TrainConfig(_Strict):
    """How to train: batches, schedule, precision and the playbook's runtime switches."""

    batch_size: int = Field(16, ge=1)
    accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer update.")
    epochs: int = Field(1, ge=1)
    steps: int | None = Field(
        None, ge=1, description="Optimizer updates to run; overrides epochs when set."
    )
    extra_steps: int = Field(0, ge=0, description="Updates added to the scheduler horizon per epoch.")
    time_budget: float | None = Field(
        None, gt=0.0, description="Train for this many seconds (also '90s', '15m', '1.5h') instead of steps/epochs: "
        "a short probe measures the update rate, the LR schedule is planned (and re-planned) to anneal exactly at "
        "the budget. Evaluations are not counted.",
    )
    budget_clock: Literal["wall", "cpu"] = Field(
        "wall", description="time_budget's clock: wall time, or this process's CPU time (steadier on a shared "
        "machine).",
    )
    lr: float = Field(3e-3, gt=0.0, description="Peak learning rate.")
    optimizer: Literal["adamw", "muon"] = Field(
        "muon", description="muon: Muon (RMS-matched to AdamW, so one lr serves both) for the blocks' 2-D "
        "matrices, AdamW for embeddings, head, norms and biases.",
    )
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    weight_decay: float = Field(0.01, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    warmup_frac: float = Field(0.05, ge=0.0, lt=1.0, description="Share of updates spent warming up.")
    amp: Literal["bf16", "none"] = Field(
        "none", description="bf16 autocast or plain fp32 (the default: on CPU at these widths fp32 is faster)."
    )
    lr_schedule: Literal["onecycle", "cosine", "constant", "progressive_plateau", "wsd"] = "wsd"
    decay_frac: float = Field(
        0.2, gt=0.0, le=1.0, description="wsd: share of the updates in the final (1-sqrt) decay to 1% of lr."
    )
    ema_decay: float | None = Field(
        None, ge=0.0, lt=1.0, description="Keep an EMA of the weights (e.g. 0.999); evaluation, checkpoints' "
        "exported weights, evaluate and export-int8 then use it.",
    )
    patience: int = Field(3, ge=1, description="progressive_plateau: evaluations without improvement.")
    min_delta: float = Field(1e-3, ge=0.0, description="progressive_plateau: improvement that counts.")
    plateau_scale_up: bool = Field(False, description="progressive_plateau: ask for a scale-up on plateau.")
    plateau_grow_layers: int = Field(
        0, ge=0, le=64,
        description="progressive_plateau with plateau_scale_up: grow the model by this many layers (function-"
        "preserving) at each plateau and keep training; 0 only signals the request.",
    )
    compress_prob: float = Field(0.0, ge=0.0, le=1.0, description="Final probability of a compressed sample.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    compile: bool = Field(False, description="torch.compile the blocks where supported.")
    quantization: Literal["none", "int8", "int4"] = Field("none", description="Export target after training.")
    qat: bool = Field(False, description="Quantization-aware training (fake-quantized weights).")
    int4_group_size: int = Field(
        32, ge=2, description="int4: weights per scale/zero point (even, divides d_model and the FF width); "
        "QAT and export-int8 --bits 4 use it.",
    )
    lambda_K: float = Field(0.0, ge=0.0, description="Loss weight of negentropy K (differentiable).")
    lambda_C: float = Field(0.0, ge=0.0, description="Loss weight of LZ complexity C (differentiable proxy).")
    lambda_S: float = Field(0.0, ge=0.0, description="Loss weight of symbiosis S (differentiable).")
    eval_every: int = Field(50, ge=1, description="Optimizer updates between validations.")
    eval_batches: int = Field(8, ge=1, description="Validation batches per evaluation.")
    save_every: int = Field(200, ge=1, description="Optimizer updates between checkpoints.")
    tensorboard: bool = Field(
        False, description="Also write step/eval curves as TensorBoard event files under <run>/tensorboard "
        "(needs the optional extra: pip install 'bit-transformer[tensorboard]').",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="Multi-process strategy under torchrun: 'ddp' replicates the model; 'fsdp' shards "
        "parameters, gradients and optimizer state (FSDP2, torch >= 2.6). Ignored in a single process.",
    )
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    keep_checkpoints: int = Field(
        3, ge=1, description="Periodic checkpoints kept on disk (plus `best` and the one `latest` names)."
    )
    objective: Literal["next_bit", "denoise"] = Field(
        "next_bit", description="next_bit: predict each bit from the bits before it (needs model.causal=true). "
        "denoise: masked bit diffusion with a bidirectional model (needs model.causal=false); its bits per byte "
        "is an upper bound (NELBO).",
    )
    teacher: str | None = Field(
        None, description="Distil: a teacher checkpoint (dir, or a run dir's latest; the server takes '<run>/<name>'). "
        "Loss = distill_weight x KL(teacher || student) on the per-bit distributions + (1 - distill_weight) x "
        "the data loss; the teacher is frozen (its EMA weights if it kept them).",
    )
    distill_weight: float = Field(0.5, ge=0.0, le=1.0, description="With teacher: the KL term's weight (alpha).")
    distill_temperature: float = Field(
        1.0, gt=0.0, le=100.0, description="With teacher: softens both per-bit distributions; the KL is scaled by "
        "T^2.",
    )
    diffusion_schedule: Literal["linear", "cosine", "exponential"] = Field(
        "linear", description="denoise: how the share of masked bits grows with diffusion time (training noise "
        "levels and the sampler's steps; the bound itself does not depend on it).",
    )

    @field_validator("time_budget", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"betas must each be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.qat and self.quantization == "none":
            raise ValueError("qat=true needs quantization='int8' or 'int4' (the export QAT trains for)")
        return self


class DataConfig(_Strict):
    """Where the text comes from and how it is split."""

    source: Literal["builtin", "files", "hf"] = Field(
        "builtin", description="builtin: text shipped with Python; files: `paths`; hf: a Hugging Face dataset."
    )
    paths: list[str] = Field(default_factory=list, description="Files or globs when source='files'.")
    hf_name: str = Field("wikitext", description="Dataset name when source='hf'.")
    hf_config: str | None = Field("wikitext-2-raw-v1", description="Dataset config when source='hf'.")
    hf_split: str = Field("train", description="Dataset split when source='hf'.")
    text_field: str = Field("text", description="Column holding the text when source='hf'.")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Tail share of the text held out.")
    max_bytes: int | None = Field(None, ge=64, description="Use at most this many bytes of text.")
    hf_data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None,
        description="source='hf': `data_files` passed to datasets.load_dataset, e.g. hf_name='text' or 'json' "
        "with local files (works offline); None for a Hub dataset.",
    )

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source == "files" and not self.paths:
            raise ValueError("source='files' needs paths: give one or more file paths or globs")
        return self


class RunConfig(_Strict):
    """Everything a training run needs; what `patch_config` edits."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)

    @model_validator(mode="after")
    def _check_arch(self) -> RunConfig:
        if self.model.arch == "framed" and self.train.compress_prob:
            raise ValueError("model.arch='framed' (the default) reads whole 9-bit frames, and compressed streams are "
                             "not framed: set model.arch='flat' to train on compressed samples, or "
                             "train.compress_prob=0")
        return self

    @model_validator(mode="after")
    def _check_int4(self) -> RunConfig:
        g, widths = self.train.int4_group_size, (self.model.d_model, self.model.ff_dim)
        if self.train.quantization == "int4" and (g % 2 or any(w % g for w in widths)):
            fits = [c for c in (16, 32, 64, 128) if all(w % c == 0 for w in widths)]
            raise ValueError(f"train.int4_group_size ({g}) must be even and divide model.d_model ({widths[0]}) and "
                             f"the FF width ({widths[1]}), the in_features of the linears it groups: try {fits or 2}")
        return self

    @model_validator(mode="after")
    def _check_objective(self) -> RunConfig:
        objective, causal = self.train.objective, self.model.causal
        if objective == "next_bit" and not causal:
            raise ValueError(
                "train.objective='next_bit' needs model.causal=true: with bidirectional attention every position "
                "sees the bit it must predict. Set model.causal=true, or train.objective='denoise' for a "
                "bidirectional denoising model"
            )
        if self.train.teacher is not None:
            if objective == "denoise":
                raise ValueError("train.teacher distils next-bit predictions: it needs train.objective='next_bit' "
                                 "(set train.teacher=null to train a denoising model)")
            if self.train.compress_prob:
                raise ValueError("train.teacher reads raw bit windows, not compressed streams: set "
                                 "train.compress_prob=0, or train.teacher=null")
        if objective == "denoise":
            problems = []
            if self.model.arch == "framed":
                problems.append("needs model.arch='flat' (a framed model, the default, is causal by construction)")
            if causal:
                problems.append("needs model.causal=false (set it, or use train.objective='next_bit')")
            if self.model.max_seq_len % FRAME_BITS:
                problems.append(f"needs model.max_seq_len to be a multiple of {FRAME_BITS} (whole frames), got "
                                f"{self.model.max_seq_len}")
            if self.train.compress_prob:
                problems.append("does not train on compressed streams: set train.compress_prob=0")
            if self.train.lambda_K or self.train.lambda_C or self.train.lambda_S:
                problems.append("has no next-bit telemetry loss: set train.lambda_K/lambda_C/lambda_S to 0")
            if problems:
                raise ValueError("train.objective='denoise' " + "; ".join(problems))
        return self


# Defaults that changed when the best small-budget CPU recipe became the default (issue 22), with the value a
# *stored* config meant when it lacks the field: a checkpoint, INT8 artifact or workspace config written before
# the field existed (block, optimizer) ran with the old default. Configs a user writes get today's defaults.
PRE_RECIPE_DEFAULTS: dict[str, dict[str, object]] = {
    "model": {"arch": "flat", "block": "classic", "dropout": 0.1, "nhead": 8, "max_seq_len": 576},
    "train": {"optimizer": "adamw", "amp": "bf16", "lr_schedule": "onecycle", "batch_size": 32, "warmup_frac": 0.1},
}


def _with_stored_defaults(section: str, data: dict) -> dict:
    return {**PRE_RECIPE_DEFAULTS[section], **data}


def stored_model_config(data: dict) -> ModelConfig:
    """A ModelConfig read back from an artifact: fields it predates keep the value it was written with."""
    return ModelConfig.model_validate(_with_stored_defaults("model", data))


def stored_config_dict(data: dict) -> dict:
    """A stored RunConfig tree with the fields it predates filled in with the values it ran with."""
    tree = dict(data)
    for section in PRE_RECIPE_DEFAULTS:
        if isinstance(tree.get(section), dict):
            tree[section] = _with_stored_defaults(section, tree[section])
    return tree


def stored_run_config(data: dict) -> RunConfig:
    """A RunConfig read back from a checkpoint, job request or workspace: fields it predates keep the value it ran
    with."""
    return RunConfig.model_validate(stored_config_dict(data) if isinstance(data, dict) else data)


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, at_most + 1) if n % d == 0)
