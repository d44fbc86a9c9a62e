"""The training loop: exact schedule horizon, accumulation, AMP, compression ramp, safety gate, compile,
callbacks, cancellation, exact resume, torchrun/DDP.

One *update* is one optimizer step; it consumes ``accum_steps`` micro-batches (the last group of an
epoch may be shorter: it still steps, with its loss scaled by its real size). Per epoch there are
``ceil(micro_batches / accum_steps) + extra_steps`` updates (extra updates re-use the epoch's first
batches), and the LR schedule is built for exactly ``total_updates``; its final LR is the LR of the last
update. Events go to ``callback(event, payload)`` and, as JSON lines, to ``out_dir/metrics.jsonl``
(unless ``metrics_log=False``: the MCP worker keeps the one event log of a job).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch.utils.data import DataLoader

from .checkpoint import (
    CheckpointInfo,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import FRAME_BITS, RunConfig
from .model import BitTransformerLM
from .parallel import Parallel
from .plan import plan_training
from .quantization import apply_qat
from .records import EvalMetrics, GrowthEvent, StepMetrics, TrainPlan, TrainResult
from .runtime import (
    EpochBatchSampler,
    any_rank,
    autocast,
    broadcast_float,
    capture_rng,
    compile_blocks,
    dist_env,
    init_distributed,
    local_main_first,
    release_distributed,
    resolve_device,
    restore_rng,
)
from .safety import GateDecision, SafetyGate
from .schedule import PlateauSignal, build_schedule, cosine_ramp, warmup_updates
from .train_loss import LN2, eval_indices, micro_batch_loss, validation_loss

__all__ = ["EvalMetrics", "StepMetrics", "TrainPlan", "TrainResult", "Trainer", "plan_training"]

Callback = Callable[[str, BaseModel], None]
MAX_BAD_UPDATES = 3  # consecutive non-finite updates that stop a run
# How gloo / NCCL report a collective whose peer process died (e.g. killed for memory).
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "NCCL communicator was aborted")


log = logging.getLogger(__name__)


class Trainer:
    """Trains ``model`` (or a fresh one from ``cfg.model``) on ``corpus`` (or ``cfg.data``, cached in ``cache_dir``).

    Under torchrun each rank constructs its own Trainer; the process group is joined here, so the corpus
    cache is built by one process per machine while the others wait.
    """

    def __init__(self, cfg: RunConfig, out_dir: str | Path, *, corpus=None, model: BitTransformerLM | None = None,
                 callback: Callback | None = None, cancel: threading.Event | None = None,
                 cache_dir: str | Path | None = None, metrics_log: bool = True):
        from .data import load_corpus  # lazy: data.py pulls in the text sources

        self.out_dir = Path(out_dir)
        self.metrics_log = metrics_log  # False: the caller keeps the one event log (the MCP worker's job log)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.callback = callback
        self.cancel = cancel or threading.Event()
        self.dist = dist_env()
        self.device = resolve_device(cfg.train.device, self.dist.local_rank)
        if model is not None:  # e.g. after scale_up: the model's architecture wins
            cfg = cfg.model_copy(update={"model": model.cfg})
        self.cfg = cfg
        self._owns_group = init_distributed(self.dist, self.device)
        if corpus is None:
            with local_main_first(self.dist):  # one process per machine builds the cache; the others read it
                corpus = load_corpus(cfg.data, cache_dir or self.out_dir / "cache")
        self.corpus = corpus
        self._datasets()
        torch.manual_seed(cfg.train.seed)
        if model is None:
            model = BitTransformerLM(cfg.model)
        self.model = apply_qat(model) if cfg.train.qat else model
        self.plan = plan_training(cfg, len(self.train_set), world_size=self.dist.world_size,
                                  params=self.model.num_parameters())

    def _datasets(self) -> None:
        from .data import BitWindowDataset

        seq_len = self.cfg.model.max_seq_len
        self.train_set = BitWindowDataset(self.corpus.train, seq_len)
        try:
            self.val_set = BitWindowDataset(self.corpus.val, seq_len)
        except ValueError:
            self.val_set = None  # validation text shorter than one window: no evals, no gate

    # ------------------------------------------------------------------------------------------ events
    def _emit(self, event: str, payload: BaseModel) -> None:
        if not self.dist.is_main:
            return
        if self._metrics is not None:
            row = {"event": event, "time": time.time(), **payload.model_dump(mode="json")}
            self._metrics.write(json.dumps(row, default=str) + "\n")
            self._metrics.flush()
        if self.callback is not None:
            self.callback(event, payload)

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, *, steps: int | None = None, epochs: int | None = None, resume: bool = False) -> TrainResult:
        self._metrics = None
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.metrics_log:
                self._metrics = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        failed = False
        try:
            return self._fit(steps, epochs, resume)
        except Exception as exc:
            failed = True
            if self.dist.is_main:
                (self.out_dir / "train_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
            result = TrainResult(status="failed", reason=self._failure_reason(exc), plan=self.plan,
                                 updates_done=getattr(self, "update", 0), checkpoint=getattr(self, "_last_ckpt", None))
            self._emit("done", result)
            return result
        finally:
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            if getattr(self, "_owns_group", False):
                release_distributed(together=not failed)  # a failed rank leaves at once: peers then error out
                self._owns_group = False

    def _failure_reason(self, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}"
        if self.dist.enabled and any(m in str(exc) for m in PEER_LOST):
            ckpt = getattr(self, "_last_ckpt", None)
            return (f"another training process stopped (rank {self.dist.rank} lost its connection to a peer: "
                    f"{text[:300]}); its own log names the cause. Resume continues from "
                    + (f"its checkpoint {Path(ckpt).name}" if ckpt else "the last checkpoint") + ".")
        return text

    def _setup(self, steps, epochs, resume: bool):
        cfg, t = self.cfg, self.cfg.train
        loaded = None
        if resume:
            try:
                loaded = load_checkpoint(resolve_checkpoint(self.ckpt_root), self.device)
            except FileNotFoundError:
                loaded = None  # nothing to resume: start fresh (reported in the plan event)
            if loaded is not None:  # the checkpoint's architecture wins (it may have been scaled up)
                self.model = loaded.model
                if loaded.model.cfg != cfg.model:
                    self.cfg = cfg = cfg.model_copy(update={"model": loaded.model.cfg})
                    self._datasets()
        self.plan = plan_training(cfg, len(self.train_set), steps=steps, epochs=epochs,
                                  world_size=self.dist.world_size, params=self.model.num_parameters())
        if loaded is not None:
            self.plan.resumed_from, self.plan.start_update = loaded.path, int(loaded.state["update"])
        self._owns_group = init_distributed(self.dist, self.device) or self._owns_group
        self.net = self.model.to(self.device)
        self.net.train()
        sample = [self.train_set[i][0] for i in range(min(t.batch_size, len(self.train_set)))]

        def warmup() -> None:  # one real-shaped step so that compile errors surface here, not mid-run
            cuda = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), autocast(self.device, self.plan.precision):
                x = torch.stack(sample).to(self.device)
                self.net(x).logits.float().sum().backward()
            self.net.zero_grad(set_to_none=True)

        ran, why = compile_blocks(self.net, t.compile, warmup)
        self.plan.compile_ran, self.plan.compile_reason = ran, why
        self.parallel = Parallel(self.net, t.distributed, self.dist, self.device)
        self.ddp = self.parallel.module
        self.optimizer = self._optimizer()
        self.schedule = build_schedule(t, self.plan.total_updates)
        self.gate = SafetyGate(t.safety)
        self.np_rng = np.random.default_rng([t.seed, self.dist.rank])
        self.update = self.epoch = self.position = self.micro_step = 0
        self.best_loss: float | None = None
        self.last_eval: EvalMetrics | None = None
        self._last_ckpt: str | None = None
        self._last_saved_update = -1
        if loaded is None:
            torch.manual_seed(t.seed * 1_000_003 + 7919 * self.dist.rank + 1)
            return
        st = loaded.state
        if loaded.optimizer_state is not None:
            self.parallel.load_optimizer_state(self.optimizer, loaded.optimizer_state)
        if loaded.scheduler_state:
            self.schedule.load_state_dict(loaded.scheduler_state)
        if st.get("gate"):
            self.gate.load_state_dict(st["gate"])
        self.update, self.epoch, self.position = st["update"], st["epoch"], st["position"]
        self.micro_step = st.get("micro_step", 0)
        saved_world = int(st.get("world_size", 1))
        if saved_world != self.dist.world_size:
            # The epoch's order is a function of (seed, epoch, world size): continue at the same share of
            # the epoch's samples, on an update boundary, in this world size's order.
            self.position = self.position * saved_world // self.dist.world_size // t.accum_steps * t.accum_steps
            self.plan.resume_note = (f"checkpoint written by {saved_world} process(es), resumed by "
                                     f"{self.dist.world_size}: the epoch's remaining data order is re-drawn")
            log.warning(self.plan.resume_note)
        self.best_loss = st.get("best_val_loss")
        self._last_ckpt = loaded.path
        self._last_saved_update = self.update
        restore_rng(st.get("rng", {}), loaded.tensors, self.np_rng)

    def _optimizer(self) -> torch.optim.Optimizer:
        decay = [p for n, p in self.net.named_parameters() if p.requires_grad and p.ndim >= 2 and "emb" not in n]
        keep = [p for n, p in self.net.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "emb" not in n)]
        groups = [{"params": decay, "weight_decay": self.cfg.train.weight_decay}, {"params": keep, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.train.lr, betas=(0.9, 0.99))

    def _loader(self, sampler: EpochBatchSampler) -> DataLoader:
        t = self.cfg.train
        # Own generator: creating an iterator (e.g. when resuming mid-epoch) never draws from the global RNG.
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=t.num_workers,
                          persistent_workers=t.num_workers > 0, generator=torch.Generator().manual_seed(t.seed),
                          pin_memory=self.device.type == "cuda")

    def _fit(self, steps, epochs, resume: bool) -> TrainResult:
        self._setup(steps, epochs, resume)
        t, plan = self.cfg.train, self.plan
        self._emit("plan", plan)
        sampler = EpochBatchSampler(len(self.train_set), t.batch_size, accum_steps=t.accum_steps,
                                    extra_steps=t.extra_steps, shuffle=True, seed=t.seed, rank=self.dist.rank,
                                    world_size=self.dist.world_size)
        loader = self._loader(sampler)
        val_idx = eval_indices(len(self.val_set), t.eval_batches * t.batch_size) if self.val_set is not None else []
        ramp_len = warmup_updates(t.warmup_frac, plan.total_updates)
        clock = _Clock(self.update)
        last_step: StepMetrics | None = None
        bad_updates, status, reason = 0, "completed", None
        group: _Group | None = None
        while self.update < plan.total_updates and status == "completed":
            if self.position >= len(sampler):
                self.epoch, self.position = self.epoch + 1, 0
            sampler.set_epoch(self.epoch, self.position)
            for inputs, targets in loader:
                if any_rank(self.cancel.is_set(), self.dist, self.device):  # checked at every micro-step boundary
                    status, reason = "cancelled", f"cancelled at update {self.update} (micro-step boundary)"
                    break
                if group is None:  # an update boundary: remember what a save here must restore
                    group = _Group(size=sampler.group_of(self.position)[1], rng=capture_rng(self.np_rng),
                                   position=self.position, epoch=self.epoch, micro_step=self.micro_step,
                                   p=_cosine_ramp(self.update, t.compress_prob, ramp_len))
                self._micro_step(group, inputs, targets)
                clock.bits += inputs.numel() * self.dist.world_size
                if len(group.losses) < group.size:
                    continue
                last_step, ok = self._update(group, clock)
                group = None
                bad_updates = 0 if ok else bad_updates + 1
                if bad_updates >= MAX_BAD_UPDATES:
                    status, reason = "gated", f"non-finite training loss/gradients for {bad_updates} updates in a row"
                    break
                final = self.update >= plan.total_updates
                if val_idx and (self.update % t.eval_every == 0 or final):
                    decision = self._evaluate(val_idx)
                    if decision.triggered:
                        status, reason = "gated", f"safety gate: {decision.reason}"
                        break
                if self.update % t.save_every == 0 or final:
                    self._save("final" if final else "periodic")
                if final:
                    break
        if status == "cancelled":
            self._save("cancelled", boundary=group)  # a partial group is dropped: resume redoes it exactly
        self.optimizer.zero_grad(set_to_none=True)
        result = TrainResult(status=status, reason=reason, plan=plan, updates_done=self.update, last_step=last_step,
                             last_eval=self.last_eval, checkpoint=self._last_ckpt,
                             best_val_bpb=None if self.best_loss is None else self.best_loss * FRAME_BITS / LN2)
        self._emit("done", result)
        return result

    def _micro_step(self, group: _Group, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Forward + backward of one micro-batch; its loss is scaled by its group's real size."""
        t = self.cfg.train
        rows = self.np_rng.random(inputs.shape[0]) < group.p if group.p > 0 else None
        last = len(group.losses) + 1 == group.size
        with self.parallel.grad_sync(last):  # all-reduce gradients only on the group's last micro-batch
            parts = micro_batch_loss(self.ddp, inputs.to(self.device, non_blocking=True),
                                     targets.to(self.device, non_blocking=True), cfg=t,
                                     ponder_weight=self.net.cfg.ponder_weight, compress=rows,
                                     precision=self.plan.precision)
            (parts.loss / group.size).backward()
        group.losses.append(float(parts.loss.detach()))
        if parts.raw_ce is not None:
            group.raw.append((parts.raw_ce, parts.n_raw))
        if parts.compressed_ce is not None:
            group.comp.append((parts.compressed_ce, parts.n_compressed))
        group.ponder += parts.ponder / group.size
        self.position += 1
        self.micro_step += 1

    def _update(self, group: _Group, clock: _Clock) -> tuple[StepMetrics, bool]:
        """Clip, set the LR of this update, step (unless non-finite), report (statistics averaged over ranks)."""
        raw_s, raw_n = sum(v * k for v, k in group.raw), sum(k for _, k in group.raw)
        comp_s, comp_n = sum(v * k for v, k in group.comp), sum(k for _, k in group.comp)
        loss, ponder = self.parallel.mean_over_ranks([sum(group.losses) / group.size, group.ponder])
        raw_s, raw_n, comp_s, comp_n = self.parallel.sum_over_ranks([raw_s, raw_n, comp_s, comp_n])
        grad_norm = self.parallel.clip_grad_norm(self.cfg.train.grad_clip)
        lr = self.schedule.apply(self.optimizer, self.update)
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        if ok:
            self.optimizer.step()  # else skipped: weights stay finite and the last checkpoint stays good
        self.optimizer.zero_grad(set_to_none=True)
        self.update += 1
        clock.train_s += time.perf_counter() - group.t0
        done = self.update - clock.start_update
        metrics = StepMetrics(
            update=self.update, micro_step=self.micro_step, epoch=self.epoch, loss=loss,
            raw_loss=raw_s / raw_n if raw_n else None, compressed_loss=comp_s / comp_n if comp_n else None, lr=lr,
            compress_prob=group.p, ponder_cost=ponder, grad_norm=grad_norm,
            bits_per_s=clock.bits / max(clock.train_s, 1e-9),
            elapsed_s=time.perf_counter() - clock.t0,
            eta_s=(self.plan.total_updates - self.update) * clock.train_s / done, precision=self.plan.precision,
        )
        self._emit("step", metrics)
        return metrics, ok

    # ------------------------------------------------------------------------------------------ eval / save
    def _evaluate(self, val_idx: list[int]) -> GateDecision:
        loss = float("nan")
        if self.dist.is_main or self.parallel.sharded:  # a sharded model needs every rank in its forward
            loss = validation_loss(self.net, self.val_set, val_idx, self.cfg.train.batch_size, self.device,
                                   self.plan.precision, objective=self.cfg.train.objective,
                                   schedule=self.cfg.train.diffusion_schedule)
        loss = broadcast_float(loss, self.dist, self.device)  # every rank keeps identical gate/schedule state
        decision = self.gate.observe(loss=loss)
        self.last_eval = EvalMetrics(update=self.update, val_loss=loss, val_bpb=loss * FRAME_BITS / LN2, gate=decision)
        self._emit("eval", self.last_eval)
        if decision.triggered:
            return decision
        signal: PlateauSignal | None = self.schedule.observe(self.update - 1, loss)
        if signal is not None and signal.scale_up_requested:
            self._emit("plateau", signal)
            if self.cfg.train.plateau_grow_layers:
                self._grow(self.cfg.train.plateau_grow_layers)
        if math.isfinite(loss) and (self.best_loss is None or loss < self.best_loss):
            self.best_loss = loss
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
        self.model = self.net = self.ddp = grown.to(self.device)
        self.parallel = Parallel(self.net, self.cfg.train.distributed, self.dist, self.device)
        self.net.train()
        self.cfg = self.cfg.model_copy(update={"model": model_cfg})
        self.optimizer = self._optimizer()
        self.plan.params = self.model.num_parameters()
        self._emit("scale_up", GrowthEvent(update=self.update, layers=model_cfg.layers, params_before=before,
                                           params_after=self.plan.params,
                                           max_logit_change=report.max_logit_change))

    def _state(self, boundary: _Group | None) -> tuple[dict, dict]:
        b = boundary or _Group(size=0, rng=capture_rng(self.np_rng), position=self.position, epoch=self.epoch,
                               micro_step=self.micro_step)
        rng_js, rng_t = b.rng
        ev = self.last_eval
        state = {
            "update": self.update, "epoch": b.epoch, "position": b.position, "micro_step": b.micro_step,
            "total_updates": self.plan.total_updates, "seed": self.cfg.train.seed, "world_size": self.dist.world_size,
            "val_loss": ev.val_loss if ev else None, "val_bpb": ev.val_bpb if ev else None,
            "best_val_loss": self.best_loss, "gate": self.gate.state_dict(), "rng": rng_js,
        }
        return state, rng_t

    def _save(self, kind: str, boundary: _Group | None = None) -> None:
        """Write a checkpoint from rank 0; every rank calls this (a sharded model is gathered collectively)."""
        if kind in ("periodic", "final") and self._last_saved_update == self.update:
            return
        ev = self.last_eval
        if ev is not None and ev.update == self.update and not math.isfinite(ev.val_loss):
            return  # never replace the last good checkpoint with a diverged state
        model_state, optimizer_state = self.parallel.full_state(self.optimizer)
        if not self.dist.is_main:
            if kind != "best":
                self._last_saved_update = self.update
            return
        state, tensors = self._state(boundary)
        name = "best" if kind == "best" else f"update-{self.update:07d}"
        path = save_checkpoint(self.ckpt_root / name, model=self.net, config=self.cfg, model_state=model_state,
                               optimizer_state=optimizer_state, scheduler=self.schedule, state=state, tensors=tensors,
                               kind=kind, update_latest=kind != "best")
        if kind != "best":
            self._last_ckpt, self._last_saved_update = str(path), self.update
            prune_checkpoints(self.ckpt_root, self.cfg.train.keep_checkpoints)
        info = next((i for i in list_checkpoints(self.ckpt_root) if i.name == name), None)
        self._emit("checkpoint", info or CheckpointInfo(name=name, path=str(path), update=self.update, kind=kind))


@dataclass
class _Group:
    """One optimizer update in progress: its micro-batch losses and the state at its start (boundary)."""

    size: int
    rng: tuple[dict, dict[str, torch.Tensor]]
    position: int
    epoch: int
    micro_step: int
    p: float = 0.0
    losses: list[float] = field(default_factory=list)
    raw: list[tuple[float, int]] = field(default_factory=list)
    comp: list[tuple[float, int]] = field(default_factory=list)
    ponder: float = 0.0
    t0: float = field(default_factory=time.perf_counter)


@dataclass
class _Clock:
    start_update: int
    t0: float = field(default_factory=time.perf_counter)
    train_s: float = 0.0
    bits: int = 0


def _cosine_ramp(update: int, end: float, warmup: int) -> float:
    return 0.0 if end <= 0 else cosine_ramp(update, 0.0, end, warmup)

