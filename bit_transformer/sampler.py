"""The training data order, one optimizer update at a time.

``EpochBatchSampler`` fixes each epoch's micro-batches from ``(seed, epoch, rank, world size)`` alone, so a resume
replays exactly what an uninterrupted run would have seen. ``UpdateBatches`` cuts that stream into groups of
``accum_steps`` micro-batches (the epoch's last group may be shorter; ``extra_steps`` groups re-use the epoch's
first batches) and yields one ``UpdateGroup`` per optimizer update, so the loop never counts micro-steps itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .config import TrainConfig


class EpochBatchSampler(Sampler[list[int]]):
    """Batches for one epoch in a resumable, seeded order; DDP-aware through ``DistributedSampler``.

    The epoch's sample order is ``DistributedSampler(seed, shuffle).set_epoch(epoch)`` for this rank
    (a plain seeded permutation when single-process), cut into ``micro`` batches. ``extra_steps``
    optimizer updates are appended per epoch, re-using the first batches of the same order, so the
    scheduler horizon ``ceil(micro/accum) + extra_steps`` is exactly what runs. ``start`` skips the
    micro-batches already done in this epoch (exact resume; the order itself is a function of
    ``(seed, epoch)`` only).
    """

    def __init__(self, n: int, batch_size: int, *, accum_steps: int = 1, extra_steps: int = 0,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if n < 1:
            raise ValueError("no training windows: the corpus is shorter than one max_seq_len window")
        self.inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=False)
        self.batch_size = batch_size
        self.accum = accum_steps
        self.extra = extra_steps
        self.epoch = 0
        self.start = 0

    @property
    def data_batches(self) -> int:
        return math.ceil(len(self.inner) / self.batch_size)

    @property
    def groups(self) -> int:
        return math.ceil(self.data_batches / self.accum) + self.extra

    def group_of(self, micro: int) -> tuple[int, int]:
        """(update index inside the epoch, micro-batches in that update) for micro-batch ``micro``."""
        regular = math.ceil(self.data_batches / self.accum)
        full = self.data_batches - (regular - 1) * self.accum  # size of the last regular group
        g = micro // self.accum if micro < self.data_batches else regular + (micro - self.data_batches) // self.accum
        return g, (full if g == regular - 1 else self.accum)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.data_batches + self.extra * self.accum

    def __iter__(self):
        self.inner.set_epoch(self.epoch)
        order = list(self.inner)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        extra = [batches[k % len(batches)] for k in range(self.extra * self.accum)]
        yield from (batches + extra)[self.start :]


@dataclass(frozen=True)
class UpdateGroup:
    """The micro-batches of one optimizer update and where in the data order it starts."""

    epoch: int
    position: int  # micro-batches of this epoch done before the group
    batches: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def size(self) -> int:
        return len(self.batches)


class UpdateBatches:
    """A seeded, resumable ``DataLoader`` over ``dataset`` that yields one ``UpdateGroup`` per update."""

    def __init__(self, dataset: Dataset, cfg: TrainConfig, *, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False):
        self.sampler = EpochBatchSampler(len(dataset), cfg.batch_size, accum_steps=cfg.accum_steps,
                                         extra_steps=cfg.extra_steps, shuffle=True, seed=cfg.seed, rank=rank,
                                         world_size=world_size)
        # Own generator: creating an iterator (e.g. when resuming mid-epoch) never draws from the global RNG.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                                 persistent_workers=cfg.num_workers > 0, pin_memory=pin_memory,
                                 generator=torch.Generator().manual_seed(cfg.seed))

    def groups(self, epoch: int, position: int) -> Iterator[UpdateGroup]:
        """Groups from micro-batch ``position`` of ``epoch`` on, across epochs, without end."""
        while True:
            if position >= len(self.sampler):
                epoch, position = epoch + 1, 0
            self.sampler.set_epoch(epoch, position)
            stream = iter(self.loader)
            while position < len(self.sampler):
                size = self.sampler.group_of(position)[1]
                yield UpdateGroup(epoch, position, list(islice(stream, size)))
                position += size
