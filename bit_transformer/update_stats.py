"""Per-update statistics of the training loop: the micro-batch sums of one update and the training-time clock.

``GroupSums`` adds up one update's micro-batches (losses, CE over raw and compressed rows, ponder cost,
distillation KL, bits); ``TrainClock`` counts training time only (evaluations and saves excluded) for the
throughput and the ETA that each step reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class GroupSums:
    """One update's micro-batch statistics, summed as the micro-batches run."""

    losses: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=lambda: [0.0, 0])  # loss x tokens, tokens (uncompressed rows)
    comp: list[float] = field(default_factory=lambda: [0.0, 0])  # the same over compressed rows
    ponder: float = 0.0
    kl: float = 0.0  # distillation KL, mean over the group's micro-batches
    bits: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, parts, group_size: int, bits: int) -> None:
        self.losses.append(float(parts.loss.detach()))
        if parts.raw_ce is not None:
            self.raw = [self.raw[0] + parts.raw_ce * parts.n_raw, self.raw[1] + parts.n_raw]
        if parts.compressed_ce is not None:
            self.comp = [self.comp[0] + parts.compressed_ce * parts.n_compressed, self.comp[1] + parts.n_compressed]
        self.ponder += parts.ponder / group_size
        self.kl += (parts.kl or 0.0) / group_size
        self.bits += bits


@dataclass
class TrainClock:
    """Training time only (evaluations and saves excluded), for throughput and the ETA."""

    start_update: int
    t0: float = field(default_factory=time.perf_counter)
    train_s: float = 0.0
    bits: int = 0

    def tick(self, sums: GroupSums) -> None:
        self.train_s += time.perf_counter() - sums.t0
        self.bits += sums.bits

    @property
    def bits_per_s(self) -> float:
        return self.bits / max(self.train_s, 1e-9)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def eta_s(self, update: int, total: int) -> float:
        return (total - update) * self.train_s / max(1, update - self.start_update)
