"""Data-parallel training on PyTorch's own stack: the torchrun process group, then DDP or FSDP2 (``fully_shard``).

``dist_env`` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; ``init_distributed`` / ``release_distributed`` join
and leave the group; ``local_main_first``, ``broadcast_float`` and ``any_rank`` are the few collectives outside
the model. ``Parallel`` wraps the model once and owns every collective the trainer needs, so ``training.py`` reads
the same whatever the strategy:

- ``module``: what the training forward/backward goes through (the DDP/FSDP wrapper, or the model).
- ``grad_sync(last)``: gradients are all-reduced only on an update's last micro-batch.
- ``mean_over_ranks``: per-update statistics (loss, ponder cost...) averaged over ranks before logging.
- ``clip_grad_norm``: the global gradient norm (identical on every rank).
- ``full_state``: the whole model and optimizer state, gathered on rank 0 for a checkpoint (FSDP shards
  both). Optimizer state is always in torch's plain integer-keyed layout, so a checkpoint written by any
  strategy and world size resumes under any other.
- ``load_optimizer_state``: the inverse, on every rank.

FSDP2 shards parameters, gradients and optimizer state. Each transformer block becomes its own unit when
the model calls blocks through their ``forward`` (standard and checkpointed stacks); reversible and ACT
stacks call a block's residual branches directly (and recompute them in backward), which FSDP's module
hooks would not see, so there the whole model is one unit: parameters are gathered once per
forward/backward, and gradients and optimizer state stay sharded.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Strategy = Literal["ddp", "fsdp"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_env() -> DistInfo:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; single process when absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: DistInfo, device: torch.device) -> bool:
    """Join the process group (nccl on CUDA, gloo on CPU) unless single-process or already joined.

    Returns True when this call created the group (the caller then destroys it when done).
    """
    if not info.enabled or (dist.is_available() and dist.is_initialized()):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def release_distributed(together: bool = True) -> None:
    """Leave the process group; ``together`` waits for every rank first.

    A rank that tears its group down while another still runs (rank 0 writing the final checkpoint) can
    abort in gloo's C++ teardown, so a normal end waits at a barrier. A failed rank must not wait (its
    peers may be blocked in a collective it will never join): it leaves at once and they error out.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if together:
        with contextlib.suppress(Exception):  # a peer that already failed must not mask this rank's result
            dist.barrier()
    dist.destroy_process_group()


@contextlib.contextmanager
def local_main_first(info: DistInfo):
    """Run the body on each machine's local rank 0 first, then on the other ranks (e.g. building a cache)."""
    if info.enabled and info.local_rank != 0:
        dist.barrier()
    try:
        yield
    finally:
        if info.enabled and info.local_rank == 0:
            dist.barrier()


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value on every rank (identity when single-process)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when any rank's flag is set (cancellation must stop all ranks together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def fsdp_support(device: torch.device) -> tuple[bool, str]:
    """Whether FSDP2 (``fully_shard``) can run with this torch on ``device``, and why not."""
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (torch >= 2.6 exports it here)
    except ImportError:
        return False, (f"torch {torch.__version__} has no torch.distributed.fsdp.fully_shard "
                       "(FSDP2 needs torch >= 2.6): use distributed='ddp'")
    if device.type not in ("cpu", "cuda"):
        return False, f"FSDP2 is not supported on device {device.type}: use distributed='ddp'"
    return True, f"FSDP2 fully_shard on {device.type} (torch {torch.__version__})"


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Submodules to shard as their own FSDP units (see the module docstring for why it depends on the stack)."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or getattr(cfg, "reversible", False) or getattr(cfg, "act", False):
        return []
    return list(getattr(model, "blocks", []))


class Parallel:
    def __init__(self, net: nn.Module, strategy: Strategy, info: DistInfo, device: torch.device):
        self.net, self.info, self.device = net, info, device
        self.strategy: Strategy | None = strategy if info.enabled else None
        self.module: nn.Module = net
        if self.strategy == "ddp":
            ids = [device.index] if device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        elif self.strategy == "fsdp":
            ok, why = fsdp_support(device)
            if not ok:
                raise ValueError(f"train.distributed='fsdp': {why}")
            from torch.distributed.fsdp import fully_shard

            # FSDP2 warns that in-place ops on a returned view would skip its backward hook; the trainer
            # never modifies model outputs in place, so the warning is noise in every run's log.
            warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
            for unit in fsdp_units(net):
                fully_shard(unit)
            fully_shard(net)  # in place: ``net`` is now the root unit

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"

    def grad_sync(self, last: bool):
        """Context for one micro-batch's forward+backward: sync gradients only on the update's last one."""
        if self.strategy == "ddp" and not last:
            return self.module.no_sync()
        if self.strategy == "fsdp":
            self.module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        """Element-wise mean of ``values`` over all ranks (one all-reduce; identity single-process)."""
        if self.strategy is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.info.world_size).tolist()

    def sum_over_ranks(self, values: list[float]) -> list[float]:
        if self.strategy is None:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def clip_grad_norm(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm)
        full = getattr(norm, "full_tensor", None)  # FSDP: a replicated DTensor
        return float(full() if full is not None else norm)

    # ------------------------------------------------------------------------------------------ state
    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """(model state, optimizer state) on rank 0, (None, None) elsewhere. Collective under FSDP."""
        if not self.sharded:
            if not self.info.is_main:
                return None, None
            return self.net.state_dict(), optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)  # cpu_offload: only rank 0 keeps it
        model_sd = get_model_state_dict(self.net, options=opts)
        opt_sd = get_optimizer_state_dict(self.net, optimizer, options=opts)
        if not self.info.is_main:
            return None, None
        return model_sd, _fqn_to_index(opt_sd)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = {id(p): n for n, p in self.net.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        set_optimizer_state_dict(self.net, optimizer, _index_to_fqn(state, order),
                                 options=StateDictOptions(full_state_dict=True))


def _fqn_to_index(sd: dict[str, Any]) -> dict[str, Any]:
    """torch.distributed's name-keyed optimizer state -> torch's plain index-keyed layout."""
    index: dict[str, int] = {}
    groups = []
    for g in sd["param_groups"]:
        ids = [index.setdefault(name, len(index)) for name in g["params"]]
        groups.append({**g, "params": ids})
    return {"state": {index[n]: v for n, v in sd["state"].items()}, "param_groups": groups}


def _index_to_fqn(sd: dict[str, Any], order: list[str]) -> dict[str, Any]:
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return {"state": {order[int(i)]: v for i, v in sd["state"].items()}, "param_groups": groups}
