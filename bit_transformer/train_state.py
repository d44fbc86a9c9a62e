"""What a checkpoint must restore for a resume to continue exactly: the counters and every RNG.

``TrainState`` holds where training stands (update, epoch, position in the epoch's data order, micro-steps,
best validation loss); it advances once per optimizer update, so between updates it is always a clean
resume point. ``capture_rng`` / ``restore_rng`` cover Python, NumPy (global and the trainer's own generator)
and torch (CPU and CUDA).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel


class TrainState(BaseModel):
    update: int = 0  # optimizer updates done
    epoch: int = 0
    position: int = 0  # micro-batches of ``epoch`` consumed
    micro_step: int = 0  # micro-batches consumed in all
    best_val_loss: float | None = None
    budget_s: float = 0.0  # train.time_budget seconds spent (probe and training; evaluations excluded)

    def advance(self, epoch: int, position: int, micro_batches: int) -> None:
        """One optimizer update consumed ``micro_batches`` starting at ``position`` of ``epoch``."""
        self.update += 1
        self.epoch, self.position = epoch, position + micro_batches
        self.micro_step += micro_batches

    def state_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """From a checkpoint's ``state`` (which also carries the gate, RNG and run facts)."""
        for name in type(self).model_fields:
            if state.get(name) is not None:
                setattr(self, name, state[name])


def capture_rng(np_rng: np.random.Generator | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every RNG a training step may draw from."""
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    legacy = np.random.get_state()
    js = {
        "python": [version, list(internal), gauss],
        "numpy_global": [legacy[0], legacy[1].tolist(), *legacy[2:]],
        "numpy_trainer": np_rng.bit_generator.state if np_rng is not None else None,
    }
    return js, tensors


def restore_rng(js: dict, tensors: dict[str, torch.Tensor], np_rng: np.random.Generator | None = None) -> None:
    if "rng.torch_cpu" in tensors:
        torch.set_rng_state(tensors["rng.torch_cpu"].to(torch.uint8))
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda[: torch.cuda.device_count()]])
    if js.get("python"):
        v, internal, gauss = js["python"]
        random.setstate((v, tuple(internal), gauss))
    if js.get("numpy_global"):
        name, keys, *rest = js["numpy_global"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if np_rng is not None and js.get("numpy_trainer"):
        np_rng.bit_generator.state = js["numpy_trainer"]
