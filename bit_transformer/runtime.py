"""Runtime decisions for training: device, precision (AMP), torch.compile, torchrun/DDP, data order.

Each decision returns what was chosen *and why*, so a run's plan can report it (playbook tasks 3, 8).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when available (the local rank's GPU under torchrun), else CPU."""
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is available: use device='cpu' or 'auto'")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def resolve_precision(amp: str, device: torch.device) -> tuple[str, str]:
    """('bf16'|'fp32', reason). bf16 only where autocast supports it on this device."""
    if amp != "bf16":
        return "fp32", "amp='none' requested"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32", "this GPU has no bf16 support; running fp32"
    if not torch.amp.is_autocast_available(device.type):
        return "fp32", f"autocast is not available on {device.type}; running fp32"
    return "bf16", f"bf16 autocast on {device.type}"


def autocast(device: torch.device, precision: str):
    """The autocast context for the chosen precision (a no-op for fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------- compile


def _import_dynamo():
    with warnings.catch_warnings():  # torch's own import-time deprecation notices are not ours to show
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._dynamo as dynamo
    return dynamo


def compile_support() -> tuple[bool, str]:
    """Whether torch.compile can run here, and why not when it cannot (task 8)."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if version < (2, 1):
        return False, f"torch {torch.__version__} < 2.1 has no usable torch.compile"
    try:
        dynamo = _import_dynamo()
    except Exception as exc:  # pragma: no cover - broken installs
        return False, f"torch._dynamo failed to import: {exc}"
    if not dynamo.is_dynamo_supported():
        return False, f"torch {torch.__version__} does not support dynamo on Python {sys.version.split()[0]}"
    return True, f"torch {torch.__version__}, Python {sys.version.split()[0]}: dynamo supported"


def compile_blocks(model: nn.Module, requested: bool, warmup=None) -> tuple[bool, str]:
    """Compile each block's attention and feed-forward submodules in place (selective compile).

    In-place ``Module.compile`` keeps parameter names, so checkpoints are unaffected. Compiling the
    submodules (not whole blocks) serves every stack: plain, checkpointed, reversible and ACT all call
    them. ``warmup()`` runs one forward/backward so that compile errors surface here; on any failure
    compilation is undone and the run continues eagerly with the reason reported.
    """
    if not requested:
        return False, "not requested (compile=false)"
    ok, why = compile_support()
    if not ok:
        return False, f"skipped: {why}"
    targets = [m for block in getattr(model, "blocks", []) for m in (getattr(block, "attn", None),
                                                                      getattr(block, "ff", None)) if m is not None]
    if not targets:
        return False, "skipped: model has no blocks with attn/ff submodules to compile"
    try:
        with warnings.catch_warnings():  # torch's import-time deprecation notices are not ours to show
            warnings.simplefilter("ignore", DeprecationWarning)
            for m in targets:
                m.compile(dynamic=None)
        if warmup is not None:
            warmup()
    except Exception as exc:
        for m in targets:
            m._compiled_call_impl = None  # undo Module.compile: back to eager
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return False, f"skipped: torch.compile failed ({type(exc).__name__}: {first[:200]}); running eagerly"
    return True, f"compiled attn+ff of {len(targets) // 2} blocks ({why})"


# ---------------------------------------------------------------------------------------------- distributed


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


# ---------------------------------------------------------------------------------------------- data order


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


# ---------------------------------------------------------------------------------------------- RNG state


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
