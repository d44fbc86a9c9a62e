"""The training loop: one optimizer update per group of micro-batches, validated, gated and checkpointed.

One *update* is one optimizer step over ``accum_steps`` micro-batches (the last group of an epoch may be shorter:
it still steps, its loss scaled by its real size). ``plan_training`` fixes the number of updates and the LR
schedule spans exactly that, so the final LR is the last update's. With ``train.time_budget`` the horizon comes
from a probe of the update rate instead, and is re-planned as the rate drifts (``budget.BudgetPlanner``); each
plan is emitted as a 'plan' event. The parts live beside this file:
``sampler.UpdateBatches`` yields the groups, ``train_state.TrainState`` counts, ``validator.Validator`` scores
held-out windows and applies the safety gate, ``checkpointer.Checkpointer`` saves and resumes, ``parallel.Parallel``
owns DDP/FSDP, ``train_loss`` computes each micro-batch's loss (with ``train.teacher``, ``distill.Teacher`` adds the
distillation term).
Events go to ``callback(event, payload)`` and, as JSON lines, to ``out_dir/metrics.jsonl`` (unless
``metrics_log=False``: the MCP worker keeps the one event log of a job); ``train.tensorboard`` adds event files.
"""

from __future__ import annotations

import logging
import math
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel

from .budget import BudgetPlanner, Clock, budget_clock
from .checkpointer import Checkpointer
from .config import FRAME_BITS, RunConfig
from .device import autocast, resolve_device
from .distill import check_compatible, load_teacher
from .ema import WeightEMA
from .factory import build_model
from .metrics_log import open_sinks
from .model import BitTransformerLM
from .optim import build_optimizer
from .parallel import (
    Parallel,
    any_rank,
    dist_env,
    init_distributed,
    local_main_first,
    release_distributed,
)
from .plan import plan_training
from .probe import measure_update_seconds
from .provenance import Invocation
from .provenance import record as record_invocation
from .quantization import apply_qat
from .records import EvalMetrics, GateDecision, GrowthEvent, StepMetrics, TrainPlan, TrainResult
from .sampler import UpdateBatches, UpdateGroup
from .schedule import PlateauSignal, build_schedule, cosine_ramp, warmup_updates
from .selective_compile import compile_blocks
from .telemetry import TelemetrySummary, sample_telemetry
from .train_loss import LN2, micro_batch_loss
from .train_state import TrainState, capture_rng, restore_rng
from .update_stats import GroupSums, TrainClock
from .validator import Validator

__all__ = ["EvalMetrics", "StepMetrics", "TrainPlan", "TrainResult", "Trainer", "plan_training"]

Callback = Callable[[str, BaseModel], None]
MAX_BAD_UPDATES = 3  # consecutive non-finite updates that stop a run
# How gloo / NCCL report a collective whose peer process died (e.g. killed for memory).
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")

log = logging.getLogger(__name__)


class Trainer:
    """Trains ``model`` (or a fresh one from ``cfg.model``) on ``corpus`` (or ``cfg.data``, cached in ``cache_dir``).

    Under torchrun each rank constructs its own Trainer; the process group is joined here, so the corpus
    cache is built by one process per machine while the others wait. ``fit`` may run more than once (a
    timing probe, then the run); each call plans, trains and leaves the process group. ``clock`` replaces
    ``train.budget_clock``'s clock for the time budget (tests pass a deterministic stand-in).
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, corpus=None, model: BitTransformerLM | None = None,
                 callback: Callback | None = None, cancel: threading.Event | None = None,
                 cache_dir: str | Path | None = None, metrics_log: bool = True, clock: Clock | None = None,
                 invocation: Invocation | None = None):
        from .data import load_corpus  # lazy: data.py pulls in the text sources

        self.out_dir = Path(out_dir)
        self.invocation = invocation  # what started this training, for the model card (provenance.py)
        self.metrics_log = metrics_log
        self.clock = clock or budget_clock(cfg.train.budget_clock)
        self.callback = callback
        self.cancel = cancel or threading.Event()
        self.dist = dist_env()
        self.device = resolve_device(cfg.train.device, self.dist.local_rank)
        if model is not None:  # e.g. after scale_up: the model's architecture wins
            cfg = cfg.model_copy(update={"model": model.cfg})
        self.teacher = load_teacher(cfg.train, cfg.model, self.device) if cfg.train.teacher else None
        if self.teacher is not None:  # pinned to the resolved checkpoint: a resume uses the same one
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"teacher": self.teacher.path})})
        self.cfg = cfg
        self._owns_group = False  # True while this Trainer holds a process group it created
        self._join_group()
        if corpus is None:
            with local_main_first(self.dist):  # one process per machine builds the cache; the others read it
                corpus = load_corpus(cfg.data, cache_dir or self.out_dir / "cache")
        self.corpus = corpus
        self._datasets()
        torch.manual_seed(cfg.train.seed)
        model = model if model is not None else build_model(cfg.model)
        self.model = apply_qat(model, cfg.train) if cfg.train.qat else model
        self.plan: TrainPlan | None = None  # each fit() plans, counts and checkpoints afresh
        self.state = TrainState()
        self.last_eval: EvalMetrics | None = None

    def _join_group(self) -> None:
        self._owns_group = init_distributed(self.dist, self.device) or self._owns_group

    def _datasets(self) -> None:
        from .data import BitWindowDataset

        seq_len = self.cfg.model.max_seq_len
        self.train_set = BitWindowDataset(self.corpus.train, seq_len)
        try:
            self.val_set = BitWindowDataset(self.corpus.val, seq_len)
        except ValueError:
            self.val_set = None  # validation text shorter than one window: no evals, no gate

    def telemetry_sample(self, windows: int = 2) -> TelemetrySummary | None:
        """K/C/S of one eval-mode forward on a few validation windows; None where rank 0 alone cannot run one."""
        if self.dist.enabled and self.cfg.train.distributed == "fsdp":
            return None  # a sharded model's forward needs every rank
        return sample_telemetry(self.model, self.val_set or self.train_set, windows)

    def _emit(self, event: str, payload: BaseModel) -> None:
        if not self.dist.is_main:
            return
        for sink in self._sinks:
            sink.write(event, payload)
        if self.callback is not None:
            self.callback(event, payload)

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, *, steps: int | None = None, epochs: int | None = None, resume: bool = False) -> TrainResult:
        self._sinks, failed, self.plan, self.state = [], False, None, TrainState()
        self.checkpoints = Checkpointer(self.out_dir / "checkpoints", self.cfg.train, is_main=self.dist.is_main)
        try:
            if self.dist.is_main:
                self._sinks = open_sinks(self.out_dir, self.cfg.train, jsonl=self.metrics_log)
            return self._fit(steps, epochs, resume)
        except Exception as exc:
            failed = True
            if self.dist.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                (self.out_dir / "train_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            plan = self.plan or plan_training(self.cfg, len(self.train_set), world_size=self.dist.world_size,
                                              params=self.model.num_parameters())
            result = TrainResult(status="failed", reason=self._failure_reason(exc), plan=plan,
                                 updates_done=self.state.update, checkpoint=self.checkpoints.last)
            self._emit("done", result)
            return result
        finally:
            for sink in self._sinks:
                sink.close()
            self._sinks = []
            if self._owns_group:
                release_distributed(together=not failed)  # a failed rank leaves at once: peers then error out
                self._owns_group = False

    def _failure_reason(self, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self.dist.enabled and any(m in str(exc) for m in PEER_LOST):
            ckpt = self.checkpoints.last
            return (f"another training process stopped (rank {self.dist.rank} lost its connection to a peer: "
                    f"{text[:300]}); its own log names the cause. Resume continues from "
                    + (f"its checkpoint {Path(ckpt).name}" if ckpt else "the last checkpoint") + ".")
        return text

    def _fit(self, steps: int | None, epochs: int | None, resume: bool) -> TrainResult:
        self._setup(steps, epochs, resume)
        if self.invocation is not None and self.dist.is_main:  # recorded once training really starts
            try:
                record_invocation(self.out_dir, self.invocation)
            except OSError as err:  # a missing record costs the model card a section, not the run
                log.warning("provenance not recorded: %s", err)
        t, plan, state = self.cfg.train, self.plan, self.state
        self._emit("plan", plan.model_copy())  # a copy: a re-plan changes self.plan, not what was reported
        batches = UpdateBatches(self.train_set, t, rank=self.dist.rank, world_size=self.dist.world_size,
                                pin_memory=self.device.type == "cuda")
        ramp_len = warmup_updates(t.warmup_frac, plan.total_updates)
        clock = TrainClock(state.update)
        last_step: StepMetrics | None = None
        bad_updates, status, reason = 0, "completed", None
        for group in batches.groups(state.epoch, state.position):
            if state.update >= plan.total_updates:  # the horizon may move (time budget): checked per update
                break
            rng_at_start = capture_rng(self.np_rng)  # what a cancel inside this group saves: resume redoes it
            started = self.clock()
            compress_p = 0.0 if t.compress_prob <= 0 else cosine_ramp(state.update, 0.0, t.compress_prob, ramp_len)
            sums = self._forward_backward(group, compress_p)
            if sums is None:
                status, reason = "cancelled", f"cancelled at update {state.update} (micro-step boundary)"
                self._save("cancelled", rng=rng_at_start)
                break
            last_step, ok = self._step(group, sums, compress_p, clock)
            bad_updates = 0 if ok else bad_updates + 1
            if bad_updates >= MAX_BAD_UPDATES:
                status, reason = "gated", f"non-finite training loss/gradients for {bad_updates} updates in a row"
                break
            if self.budget is not None:
                self._spend_budget(self.clock() - started)
            final = state.update == plan.total_updates
            if self.validator.due(state.update, final=final):
                decision = self._evaluate()
                if decision.triggered:
                    status, reason = "gated", f"safety gate: {decision.reason}"
                    break
            if self.checkpoints.due(state.update, final=final):
                self._save("final" if final else "periodic")
        self.optimizer.zero_grad(set_to_none=True)
        best = state.best_val_loss
        result = TrainResult(status=status, reason=reason, plan=plan, updates_done=state.update, last_step=last_step,
                             last_eval=self.last_eval, checkpoint=self.checkpoints.last,
                             best_val_bpb=None if best is None else best * FRAME_BITS / LN2)
        self._emit("done", result)
        return result

    def _setup(self, steps: int | None, epochs: int | None, resume: bool) -> None:
        """Plan, place and wrap the model, build optimizer, schedule and gate; then restore a checkpoint's state."""
        self._join_group()
        t = self.cfg.train
        loaded = self.checkpoints.resume_point(self.device) if resume else None
        if loaded is not None and loaded.model.cfg != self.cfg.model:  # a checkpoint's architecture wins (scale-up)
            self.cfg = self.cfg.model_copy(update={"model": loaded.model.cfg})
            self._datasets()
        if loaded is not None:
            self.model = loaded.model
        self.plan = plan = plan_training(self.cfg, len(self.train_set), steps=steps, epochs=epochs,
                                         world_size=self.dist.world_size, params=self.model.num_parameters())
        self.model = self.model.to(self.device).train()
        self._check_supported()
        if self.teacher is not None:
            check_compatible(self.teacher.model.cfg, self.cfg.model)  # a resumed checkpoint's architecture too
            plan.teacher = self.teacher.brief(self.cfg.train)
        self.budget = self._plan_budget(loaded) if t.time_budget is not None else None
        plan.compile_ran, plan.compile_reason = compile_blocks(self.model, t.compile, self._compile_warmup)
        self.parallel = Parallel(self.model, t.distributed, self.dist, self.device)
        self.optimizer = self._optimizer()
        self.schedule = build_schedule(t, plan.total_updates)
        self.ema = WeightEMA(self.model, t.ema_decay) if t.ema_decay is not None else None
        self.validator = Validator(self.val_set, t, self.dist, self.device)
        self.np_rng = np.random.default_rng([t.seed, self.dist.rank])
        self.state, self.last_eval = TrainState(), None
        if loaded is None:
            torch.manual_seed(t.seed * 1_000_003 + 7919 * self.dist.rank + 1)
            return
        saved = loaded.state
        if self.teacher is not None:
            self.teacher.check_resume(saved.get("teacher"))
        plan.resumed_from, plan.start_update = loaded.path, int(saved["update"])
        if loaded.optimizer_state is not None:
            self.parallel.load_optimizer_state(self.optimizer, loaded.optimizer_state)
        if loaded.scheduler_state:
            self.schedule.load_state_dict(loaded.scheduler_state)
        if saved.get("gate"):
            self.validator.gate.load_state_dict(saved["gate"])
        self.state.load_state_dict(saved)
        saved_world = int(saved.get("world_size", 1))
        if saved_world != self.dist.world_size:
            # The epoch's order is a function of (seed, epoch, world size): continue at the same share of
            # the epoch's samples, on an update boundary, in this world size's order.
            share = self.state.position * saved_world // self.dist.world_size
            self.state.position = share // t.accum_steps * t.accum_steps
            plan.resume_note = (f"checkpoint written by {saved_world} process(es), resumed by "
                                f"{self.dist.world_size}: the epoch's remaining data order is re-drawn")
            log.warning(plan.resume_note)
        restore_rng(saved.get("rng", {}), loaded.tensors, self.np_rng)
        if self.ema is not None:
            self.ema.load(loaded.tensors, int(saved.get("ema_updates", 0)))

    def _check_supported(self) -> None:
        t = self.cfg.train
        if self.dist.enabled and t.distributed == "fsdp":
            for name, on, fix in (("optimizer='muon'", t.optimizer == "muon", "set train.optimizer='adamw'"),
                                  ("ema_decay", t.ema_decay is not None, "set train.ema_decay=null")):
                if on:
                    raise ValueError(f"train.{name} is not supported with distributed='fsdp' (sharded parameters): "
                                     f"{fix}, or use distributed='ddp'")

    # ------------------------------------------------------------------------------------------ time budget
    def _plan_budget(self, loaded) -> BudgetPlanner:
        """Probe the update rate (a throw-away copy; the run's state is untouched) and plan the horizon."""
        t, plan = self.cfg.train, self.plan
        used = float(loaded.state.get("budget_s", 0.0)) if loaded is not None else 0.0
        budget = BudgetPlanner(t.time_budget, used_s=used)
        t0 = self.clock()
        rate = measure_update_seconds(self.model, self.cfg, self.train_set, device=self.device,
                                      precision=plan.precision, clock=self.clock, teacher=self.teacher)
        probe_s = self.clock() - t0
        if self.dist.enabled:  # every rank must plan the same horizon
            rate, probe_s = self._mean_before_wrap([rate, probe_s])
        budget.spend(probe_s)
        start = int(loaded.state["update"]) if loaded is not None else 0
        plan.time_budget_s, plan.budget_clock, plan.probe_s_per_update = t.time_budget, t.budget_clock, rate
        self._set_horizon(budget.horizon(start, rate), budget, emit=False)
        plan.warmup_updates = warmup_updates(t.warmup_frac, plan.total_updates)
        return budget

    def _mean_before_wrap(self, values: list[float]) -> list[float]:
        """Mean over ranks before ``self.parallel`` exists (the probe runs before the model is wrapped)."""
        import torch.distributed as torch_dist

        x = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(x)
        return (x / self.dist.world_size).tolist()

    def _set_horizon(self, horizon: int, budget: BudgetPlanner, *, emit: bool = True, note: str | None = None) -> None:
        plan = self.plan
        plan.total_updates = plan.scheduler_horizon = horizon
        plan.epochs = math.ceil(horizon / plan.updates_per_epoch)
        plan.budget_used_s, plan.replans, plan.budget_note = round(budget.used_s, 3), budget.replans, note
        if emit:
            self.schedule.replan(horizon)
            self._emit("plan", plan.model_copy())

    def _spend_budget(self, seconds: float) -> None:
        """Count one update's training time; re-plan when due, or end the run when the budget is spent."""
        if self.dist.enabled:  # the same figure on every rank, so every rank stops and re-plans together
            seconds = self.parallel.mean_over_ranks([seconds])[0]
        budget, update = self.budget, self.state.update
        budget.spend(seconds)
        self.state.budget_s = budget.used_s
        if update >= self.plan.total_updates:
            return
        if budget.exhausted:  # the safety net: the plan should have ended first
            self._set_horizon(update, budget, note=f"budget spent at update {update}, before the planned "
                              f"{self.plan.total_updates}: the schedule did not reach its final LR")
            return
        horizon = budget.replan(update)
        if horizon is not None:
            self._set_horizon(horizon, budget)

    def _compile_warmup(self) -> None:
        """One real-shaped step, so that compile errors surface before training, not mid-run."""
        sample = [self.train_set[i][0] for i in range(min(self.cfg.train.batch_size, len(self.train_set)))]
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), autocast(self.device, self.plan.precision):
            self.model(torch.stack(sample).to(self.device)).logits.float().sum().backward()
        self.model.zero_grad(set_to_none=True)

    def _optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg.train)

    # ------------------------------------------------------------------------------------------ one update
    def _forward_backward(self, group: UpdateGroup, compress_p: float) -> GroupSums | None:
        """Forward + backward of each micro-batch, loss scaled by the group's real size; None when cancelled."""
        sums = GroupSums()
        for i, (inputs, targets) in enumerate(group.batches):
            if any_rank(self.cancel.is_set(), self.dist, self.device):  # checked at every micro-step boundary
                return None
            rows = self.np_rng.random(inputs.shape[0]) < compress_p if compress_p > 0 else None
            with self.parallel.grad_sync(last=i == group.size - 1):  # all-reduce only on the last micro-batch
                parts = micro_batch_loss(self.parallel.module, inputs.to(self.device, non_blocking=True),
                                         targets.to(self.device, non_blocking=True), cfg=self.cfg.train,
                                         ponder_weight=self.model.cfg.ponder_weight, compress=rows,
                                         precision=self.plan.precision, teacher=self.teacher)
                (parts.loss / group.size).backward()
            sums.add(parts, group.size, bits=inputs.numel() * self.dist.world_size)
        return sums

    def _step(self, group: UpdateGroup, sums: GroupSums, compress_p: float,
              clock: TrainClock) -> tuple[StepMetrics, bool]:
        """Clip, set this update's LR, step (unless non-finite), report (statistics averaged over ranks)."""
        loss, ponder, kl = self.parallel.mean_over_ranks([sum(sums.losses) / group.size, sums.ponder, sums.kl])
        raw_s, raw_n, comp_s, comp_n = self.parallel.sum_over_ranks([*sums.raw, *sums.comp])
        grad_norm = self.parallel.clip_grad_norm(self.cfg.train.grad_clip)
        lr = self.schedule.apply(self.optimizer, self.state.update)
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        if ok:
            self.optimizer.step()  # else skipped: weights stay finite and the last checkpoint stays good
            if self.ema is not None:
                self.ema.update(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.advance(group.epoch, group.position, group.size)
        clock.tick(sums)
        metrics = StepMetrics(
            update=self.state.update, micro_step=self.state.micro_step, epoch=self.state.epoch, loss=loss,
            raw_loss=raw_s / raw_n if raw_n else None, compressed_loss=comp_s / comp_n if comp_n else None, lr=lr,
            compress_prob=compress_p, ponder_cost=ponder, grad_norm=grad_norm, bits_per_s=clock.bits_per_s,
            elapsed_s=clock.elapsed_s, eta_s=clock.eta_s(self.state.update, self.plan.total_updates),
            precision=self.plan.precision, distill_kl=kl if self.teacher is not None else None,
        )
        self._emit("step", metrics)
        return metrics, ok

    # ------------------------------------------------------------------------------------------ eval / grow / save
    def _evaluate(self) -> GateDecision:
        """Validate; then let a plateau schedule react, and keep the best model so far."""
        update = self.state.update
        if self.ema is None:
            ev = self.validator.run(self.model, update, self.plan.precision, sharded=self.parallel.sharded)
        else:  # the averaged weights are the ones evaluated, kept as 'best' and exported
            with self.ema.swapped(self.model):
                ev = self.validator.run(self.model, update, self.plan.precision, sharded=self.parallel.sharded)
        self.last_eval = ev
        self._emit("eval", ev)
        loss, decision = ev.val_loss, ev.gate
        if decision.triggered:
            return decision
        signal: PlateauSignal | None = self.schedule.observe(update - 1, loss)
        if signal is not None and signal.scale_up_requested:
            self._emit("plateau", signal)
            if self.cfg.train.plateau_grow_layers:
                self._grow(self.cfg.train.plateau_grow_layers)
        best = self.state.best_val_loss
        if math.isfinite(loss) and (best is None or loss < best):
            self.state.best_val_loss = loss
            self._save("best")
        return decision

    def _grow(self, extra_layers: int) -> None:
        """Answer a plateau's scale-up request in place: deeper model, fresh optimizer, same schedule.

        New blocks start as identities, so the loss does not jump; the schedule keeps its horizon and its
        plateau state (the LR was just lowered). Not done under DDP or compile, whose wrappers would
        have to be rebuilt on every rank: there the request stays a signal.
        """
        from .scale import scale_up  # scale imports the model; only needed here

        if self.dist.enabled or self.plan.compile_ran:
            log.warning("plateau scale-up skipped: not supported with DDP or torch.compile (signal only)")
            return
        before = self.model.num_parameters()
        grown, model_cfg, report = scale_up(self.model, self.model.cfg, layers=self.model.cfg.layers + extra_layers)
        self.model = grown.to(self.device).train()
        self.parallel = Parallel(self.model, self.cfg.train.distributed, self.dist, self.device)
        self.cfg = self.cfg.model_copy(update={"model": model_cfg})
        self.optimizer = self._optimizer()
        if self.ema is not None:  # the average of the old architecture does not fit the new one
            self.ema = WeightEMA(self.model, self.cfg.train.ema_decay)
        self.plan.params = self.model.num_parameters()
        self._emit("scale_up", GrowthEvent(update=self.state.update, layers=model_cfg.layers, params_before=before,
                                           params_after=self.plan.params,
                                           max_logit_change=report.max_logit_change))

    def _save(self, kind: str, rng: tuple[dict, dict[str, torch.Tensor]] | None = None) -> None:
        """Checkpoint the current update (every rank calls this); ``rng``: the state at the update's start."""
        rng_js, rng_tensors = rng or capture_rng(self.np_rng)
        ev = self.last_eval
        state = {**self.state.state_dict(), "total_updates": self.plan.total_updates, "seed": self.cfg.train.seed,
                 "world_size": self.dist.world_size, "val_loss": ev.val_loss if ev else None,
                 "val_bpb": ev.val_bpb if ev else None, "gate": self.validator.gate.state_dict(), "rng": rng_js}
        if self.teacher is not None:
            state["teacher"] = self.teacher.record()
        if self.ema is not None:
            state["ema_updates"] = self.ema.updates
            rng_tensors = {**rng_tensors, **self.ema.tensors()}
        info = self.checkpoints.save(kind, update=self.state.update, parallel=self.parallel, optimizer=self.optimizer,
                                     config=self.cfg, schedule=self.schedule, state=state, tensors=rng_tensors,
                                     last_eval=ev)
        if info is not None:
            self._emit("checkpoint", info)
