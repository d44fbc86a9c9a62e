"""Where a run's events are written besides the caller's callback: JSON lines, and TensorBoard when asked.

``metrics.jsonl`` holds every event (plan, step, eval, checkpoint, ...), one JSON object per line, for scripts.
With ``train.tensorboard=true`` the step and eval scalars also go to ``<run>/tensorboard/`` as TensorBoard
event files (``torch.utils.tensorboard``; needs the optional extra: ``pip install 'bit-transformer[tensorboard]'``),
so ``tensorboard --logdir runs`` shows every run's curves.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from .config import FRAME_BITS, TrainConfig
from .train_loss import LN2

TENSORBOARD_HINT = ("train.tensorboard=true needs the tensorboard package: pip install 'bit-transformer[tensorboard]' "
                    "(or set train.tensorboard=false)")


class Sink(Protocol):
    def write(self, event: str, payload: BaseModel) -> None: ...
    def close(self) -> None: ...


class JsonLines:
    def __init__(self, path: Path):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, event: str, payload: BaseModel) -> None:
        row = {"event": event, "time": time.time(), **payload.model_dump(mode="json")}
        self._file.write(json.dumps(row, default=str) + "\n")
        self._file.flush()  # a crash keeps every event written so far

    def close(self) -> None:
        self._file.close()


class TensorBoard:
    """Training and validation curves, in bits per byte as well as nats per bit, against the update."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch's module imports the tensorboard package
            raise RuntimeError(TENSORBOARD_HINT) from err
        self._writer = SummaryWriter(str(log_dir))

    def write(self, event: str, payload: BaseModel) -> None:
        add = self._writer.add_scalar
        if event == "step":
            u = payload.update
            add("train/loss", payload.loss, u)
            add("train/bpb", payload.loss * FRAME_BITS / LN2, u)
            add("train/lr", payload.lr, u)
            add("train/grad_norm", payload.grad_norm, u)
            add("train/bits_per_s", payload.bits_per_s, u)
            if payload.compress_prob:
                add("train/compress_prob", payload.compress_prob, u)
        elif event == "eval":
            add("val/loss", payload.val_loss, payload.update)
            add("val/bpb", payload.val_bpb, payload.update)
        elif event == "plan":
            self._writer.add_text("plan", "```\n" + payload.model_dump_json(indent=1) + "\n```")
        elif event == "done":
            self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_sinks(out_dir: Path, cfg: TrainConfig, *, jsonl: bool = True) -> list[Sink]:
    """The sinks a run writes to: ``metrics.jsonl`` unless ``jsonl`` is false, TensorBoard if configured."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sinks: list[Sink] = [JsonLines(out_dir / "metrics.jsonl")] if jsonl else []
    if cfg.tensorboard:
        try:
            sinks.append(TensorBoard(out_dir / "tensorboard"))
        except Exception:
            for sink in sinks:
                sink.close()
            raise
    return sinks
