"""The server's side of the engine: corpus, derived facts, checkpoints and loaded models, imported lazily.

Nothing here is imported at start-up; the first tool that needs torch pays for the import (~2 s),
later calls reuse cached corpora, parameter counts and models. Model work is serialized by one lock
(``Engine.lock``) so that, e.g., a scale_up never races an evaluate on the same weights. Training
itself never runs here (see ``jobs.py``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from bit_transformer.records import CorpusInfo

from .views import DerivedFacts, MemoryEstimate, PlanDetail
from .workspace import Workspace, WorkspaceError, atomic_write_json

log = logging.getLogger(__name__)

SCALE_RUN = "scale-ups"


class EngineError(ValueError):
    """A user-facing problem (no model yet, unknown checkpoint...); the message says what to do."""


class Engine:
    def __init__(self, ws: Workspace):
        self.ws = ws
        self.lock = threading.RLock()
        self._corpora: dict[str, Any] = {}
        self._params: dict[str, int] = {}
        self._derived: dict[str, DerivedFacts] = {}
        self._models: dict[str, tuple[float, Any, Any]] = {}

    # ---- data ---------------------------------------------------------------------------------------------
    def corpus(self, data_cfg, *, force: bool = False):
        """load_corpus for ``data_cfg`` (memoized per config; ``force`` reloads, i.e. re-checks the cache)."""
        from bit_transformer.data import load_corpus

        data_cfg = self.ws.confine_data(data_cfg, check_files=True)  # file sources must live in the workspace
        self.ws.drop_links(self.ws.cache_dir, what="cache")  # nothing is read or written through a cache link
        key = data_cfg.model_dump_json()
        with self.lock:
            if force or key not in self._corpora:
                t0 = time.perf_counter()
                corpus = load_corpus(data_cfg, self.ws.cache_dir)
                corpus.load_s = time.perf_counter() - t0  # type: ignore[attr-defined]
                self._corpora[key] = corpus
            return self._corpora[key]

    def data_view(self, corpus) -> CorpusInfo:
        return corpus_info(corpus, getattr(corpus, "load_s", None))

    @staticmethod
    def windows(bits, seq_len: int) -> int:
        from bit_transformer.data import BitWindowDataset

        try:
            return len(BitWindowDataset(bits, seq_len))
        except ValueError:
            return 0

    # ---- derived facts ---------------------------------------------------------------------------------------
    def params(self, model_cfg) -> int:
        key = model_cfg.model_dump_json()
        if key not in self._params:
            import torch

            from bit_transformer.factory import build_model

            with torch.device("meta"):  # no memory, no init cost: just the shapes
                self._params[key] = build_model(model_cfg).num_parameters()
        return self._params[key]

    def plan(self, cfg, n_windows: int, *, steps: int | None = None, epochs: int | None = None) -> PlanDetail:
        from bit_transformer.plan import plan_training

        plan = plan_training(cfg, n_windows, steps=steps, epochs=epochs, params=self.params(cfg.model))
        return PlanDetail.model_validate(plan.model_dump())

    @staticmethod
    def kernel_notes(cfg) -> list[str]:
        """Settings that pick a slow attention kernel on the device training would use."""
        from bit_transformer.attention import kernel_notes
        from bit_transformer.device import resolve_device

        try:
            device = resolve_device(cfg.train.device).type
        except Exception:  # e.g. device='cuda' without CUDA: training reports that itself
            device = cfg.train.device
        return kernel_notes(cfg.model, device)

    def derived(self, cfg) -> DerivedFacts:
        """Parameter count, update counts and a memory estimate for ``cfg`` (cached per config)."""
        key = cfg.model_dump_json()
        cached = self._derived.get(key)
        if cached is not None:
            return cached
        notes: list[str] = []
        params = self.params(cfg.model)
        seq_len = cfg.model.max_seq_len
        n_windows = plan = data = None
        try:
            if cfg.data.source == "hf" and self.ws.confine_data(cfg.data).model_dump_json() not in self._corpora:
                raise EngineError("Hugging Face data is fetched only by prepare_data() or train()")
            corpus = self.corpus(cfg.data)
            data = self.data_view(corpus)
            n_windows = self.windows(corpus.train, seq_len)
            if n_windows == 0:
                notes.append(f"the training text ({corpus.n_train_bytes} bytes) is shorter than one window of "
                             f"{seq_len} bits: lower model.max_seq_len or use more data")
            else:
                plan = self.plan(cfg, n_windows)
        except Exception as err:  # data errors are facts to report, not a failed config
            notes.append(f"data not loaded ({type(err).__name__}: {err}); update counts unknown")
        notes.extend(self.kernel_notes(cfg))
        facts = DerivedFacts(params=params, seq_len=seq_len, train_windows=n_windows, plan=plan,
                             memory=memory_estimate(cfg, params), data=data, notes=notes)
        self._derived[key] = facts
        return facts

    # ---- speed ---------------------------------------------------------------------------------------------------
    SPEED_FILE = "speed.json"
    SPEED_MAX_PARAMS = 20_000_000  # larger models are not probed by get_config (seconds per probe update)

    def with_speed(self, cfg, facts: DerivedFacts) -> DerivedFacts:
        """``facts`` plus measured seconds/update, the plan's ETA and one budget note (measured once per model and
        batch shape on this machine, cached in the workspace's cache/speed.json)."""
        from bit_transformer.budget import budget_advice

        if facts.params is None or facts.params > self.SPEED_MAX_PARAMS:
            return facts
        try:
            s = self.seconds_per_update(cfg)
        except Exception as err:  # an estimate is a bonus: never fail get_config on it
            log.warning("speed probe failed: %s", err)
            return facts
        plan, budget = facts.plan, cfg.train.time_budget
        total = plan.total_updates if plan else None
        eta = budget if budget is not None else (None if total is None else total * s)
        note = budget_advice(s, plan.updates_per_epoch if plan else 1, time_budget=budget)
        return facts.model_copy(update={"s_per_update": float(f"{s:.3g}"),
                                        "eta_s": None if eta is None else round(eta, 1), "notes": [*facts.notes, note]})

    def seconds_per_update(self, cfg) -> float:
        import torch

        from bit_transformer.probe import estimate_update_seconds

        threads = int(os.environ.get("BT_TORCH_THREADS") or torch.get_num_threads())  # what a worker will use
        t = cfg.train
        key = json.dumps({"model": cfg.model.model_dump(mode="json"), "threads": threads, **{
            k: getattr(t, k) for k in ("batch_size", "accum_steps", "amp", "device", "optimizer", "objective")}},
            sort_keys=True)
        path = self.ws.cache_dir / self.SPEED_FILE
        with self.lock:
            try:
                cache = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                cache = {}
            if key in cache:
                return float(cache[key])
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                cache[key] = estimate_update_seconds(cfg)
            finally:
                torch.set_num_threads(before)
            atomic_write_json(path, cache)
            return float(cache[key])

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[str, Any]]:
        """[("<run>/<name>", CheckpointInfo)] for every complete checkpoint, oldest first."""
        from bit_transformer.checkpoint import list_checkpoints

        out = []
        # Confined walk: runs/<run>, its checkpoints/ folder and each checkpoint must be real folders
        # inside the workspace; symlinked ones are skipped with a warning (never listed or offered).
        for run in (p for p in self.ws.entries(self.ws.runs_dir, what="run") if p.is_dir()):
            root = run / "checkpoints"
            if not root.is_dir() or not self.ws.confined(root, run):
                if root.is_symlink():
                    log.warning("skipping run %s: its checkpoints folder is a symlink", run.name)
                continue
            inside = {p.name for p in self.ws.entries(root, what="checkpoint", files=("meta.json",))}
            for info in list_checkpoints(root):
                if info.name in inside:
                    out.append((f"{run.name}/{info.name}", info))
        return sorted(out, key=lambda x: (x[1].created_at, x[0]))

    def resolve(self, name: str | None) -> tuple[str, Path]:
        """A checkpoint name (``run/name``, a bare name if unique, 'latest') or None (the current one)."""
        if name is None:
            name = self.ws.load_state().current_checkpoint
            if name is None or not self._exists(name):
                all_ = self.loadable()
                if not all_:
                    raise EngineError("no model yet: run train(steps=...) first, or load_checkpoint(name) / "
                                      "scale_up(...) to set one")
                name = all_[-1][0]
        elif name == "latest":
            all_ = self.loadable()
            if not all_:
                raise EngineError("no checkpoints yet: run train(steps=...) first")
            name = all_[-1][0]
        elif "/" not in name:
            matches = [n for n, _ in self.checkpoints() if n.split("/", 1)[1] == name]
            if len(matches) != 1:
                raise EngineError(f"checkpoint {name!r} is {'ambiguous' if matches else 'unknown'}: "
                                  f"use '<run>/<name>' as list_checkpoints() shows it"
                                  + (f" (one of {matches})" if matches else ""))
            name = matches[0]
        try:
            path = self.ws.checkpoint_path(name)
        except WorkspaceError as err:
            raise EngineError(str(err)) from err
        if not (path / "meta.json").is_file():
            raise EngineError(f"checkpoint {name!r} does not exist; list_checkpoints() shows the available names")
        return name, path

    def teacher(self, cfg):
        """``cfg`` with ``train.teacher`` (a workspace checkpoint name, as ``resolve`` takes) as its path, for the
        worker; names outside the workspace's checkpoints are refused like any other checkpoint name."""
        if cfg.train.teacher is None:
            return cfg
        try:
            _, path = self.resolve(cfg.train.teacher)
        except EngineError as err:
            raise EngineError(f"train.teacher: {err}") from err
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"teacher": str(path)})})

    def loadable(self) -> list[tuple[str, Any]]:
        """The checkpoints that passed the cheap damage check (what 'latest' and defaults pick from)."""
        return [(n, info) for n, info in self.checkpoints() if not info.damaged]

    def _exists(self, name: str) -> bool:
        try:
            return (self.ws.checkpoint_path(name) / "meta.json").is_file()
        except WorkspaceError:
            return False

    def model(self, name: str | None = None):
        """(name, model in eval mode, RunConfig) for a checkpoint; cached until its meta.json changes."""
        from bit_transformer.checkpoint import CheckpointDamaged, load_model

        name, path = self.resolve(name)
        stamp = (path / "meta.json").stat().st_mtime
        with self.lock:
            cached = self._models.get(str(path))
            if cached is None or cached[0] != stamp:
                try:
                    model, cfg = load_model(path)
                except CheckpointDamaged as err:  # names the checkpoint and file and what to do
                    raise EngineError(str(err)) from err
                model.eval()
                self._models = {str(path): (stamp, model, cfg)}  # keep one model in memory
                cached = self._models[str(path)]
        return name, cached[1], cached[2]

    def forget(self, path: Path) -> None:
        """Drop cached models loaded from ``path`` or below it (it was deleted)."""
        with self.lock:
            self._models = {k: v for k, v in self._models.items() if not Path(k).is_relative_to(path)}

    def checkpoint_meta(self, path: Path) -> dict[str, Any]:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))

    def fresh_model(self, cfg):
        """An untrained model of ``cfg.model`` (seeded), for inspection before any training."""
        import torch

        from bit_transformer.factory import build_model
        from bit_transformer.memory_limits import check_fits

        check_fits(cfg, purpose="building")  # never build in the server what the machine cannot hold
        torch.manual_seed(cfg.train.seed)
        return build_model(cfg.model).eval()


def corpus_info(corpus, load_s: float | None = None) -> CorpusInfo:
    """The record of a loaded ``bit_transformer.data.Corpus`` (what the 'data' event and prepare_data report)."""
    return CorpusInfo(source_id=corpus.source_id, content_hash=corpus.content_hash, n_bytes=corpus.n_bytes,
                      train_bytes=corpus.n_train_bytes, val_bytes=corpus.n_val_bytes, cache_hit=corpus.cache_hit,
                      cache_note=corpus.cache_note, load_s=round(load_s, 4) if load_s is not None else None)


def memory_estimate(cfg, params: int) -> MemoryEstimate:
    """Training memory in MiB: weights + grads (fp32), AdamW moments, activations (Korthikanti-style count).

    Activations per block per token ~ 34 * d_model values plus 5 * heads * keys for attention
    (keys = the chunk window when chunked); bf16 halves them. Checkpointing keeps only block inputs plus
    one block's working set; reversible keeps two activations per position regardless of depth.
    """
    from bit_transformer.memory_limits import MIB, estimate

    need = estimate(cfg, params)  # the same numbers the size guard (patch_config, builds, jobs) compares
    return MemoryEstimate(
        weights_mb=round(need.weights / MIB, 2), grads_mb=round(need.grads / MIB, 2),
        optimizer_mb=round(need.optimizer / MIB, 2), activations_mb=round(need.activations / MIB, 2),
        total_mb=round(need.training / MIB, 2),
        note=f"rough estimate per micro-batch of {cfg.train.batch_size} x {cfg.model.max_seq_len} bits "
             f"({need.how}); real use varies by backend",
    )
