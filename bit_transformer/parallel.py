"""Data-parallel training on PyTorch's own stack: DDP, or FSDP2 (``fully_shard``) for large models.

``Parallel`` wraps the model once and owns every collective the trainer needs, so ``training.py`` reads
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
import warnings
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from .runtime import DistInfo

Strategy = Literal["ddp", "fsdp"]


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
