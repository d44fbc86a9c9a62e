"""A run's checkpoints: when to write one (cadence), which to keep (pruning), and where a resume starts.

The trainer hands over what to save; the checkpointer decides whether a save is due, refuses to replace the
last good checkpoint with a diverged state, writes on rank 0 only (a sharded model is gathered on every
rank first), prunes old periodic checkpoints, and remembers the newest one for the run's result.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .checkpoint import (
    LoadedCheckpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import RunConfig, TrainConfig
from .parallel import Parallel
from .records import CheckpointInfo, EvalMetrics


class Checkpointer:
    def __init__(self, root: Path, cfg: TrainConfig, *, is_main: bool):
        self.root = root
        self.save_every, self.keep = cfg.save_every, cfg.keep_checkpoints
        self.is_main = is_main
        self.last: str | None = None  # newest periodic / final / cancelled checkpoint (what a resume would use)
        self.saved_update = -1  # the update ``last`` holds, so a final save right after a periodic one is skipped

    def resume_point(self, device: torch.device) -> LoadedCheckpoint | None:
        """The run's latest checkpoint, loaded; None when the run has none yet (training starts fresh)."""
        try:
            loaded = load_checkpoint(resolve_checkpoint(self.root), device)
        except FileNotFoundError:
            return None
        self.last, self.saved_update = loaded.path, int(loaded.state["update"])
        return loaded

    def due(self, update: int, *, final: bool) -> bool:
        return final or update % self.save_every == 0

    def save(self, kind: str, *, update: int, parallel: Parallel, optimizer: torch.optim.Optimizer, config: RunConfig,
             schedule: Any, state: dict[str, Any], tensors: dict[str, torch.Tensor],
             last_eval: EvalMetrics | None) -> CheckpointInfo | None:
        """Write ``kind`` (periodic | final | best | cancelled) at ``update``; the info on rank 0, else None.

        Every rank must call this: under FSDP gathering the state is a collective.
        """
        if kind in ("periodic", "final") and self.saved_update == update:
            return None
        if last_eval is not None and last_eval.update == update and not math.isfinite(last_eval.val_loss):
            return None  # never replace the last good checkpoint with a diverged state
        model_state, optimizer_state = parallel.full_state(optimizer)
        if kind != "best":
            self.saved_update = update
        if not self.is_main:
            return None
        name = "best" if kind == "best" else f"update-{update:07d}"
        path = save_checkpoint(self.root / name, model=parallel.net, config=config, model_state=model_state,
                               optimizer_state=optimizer_state, scheduler=schedule, state=state, tensors=tensors,
                               kind=kind, update_latest=kind != "best")
        if kind != "best":
            self.last = str(path)
            prune_checkpoints(self.root, self.keep)
        info = next((i for i in list_checkpoints(self.root) if i.name == name), None)
        return info or CheckpointInfo(name=name, path=str(path), update=update, kind=kind)
