"""How much memory a configuration needs, how much this machine has, and a guard that refuses the excess.

One estimate for everyone: ``get_config`` shows it, ``patch_config`` refuses a config over the limit,
the server checks it before every in-process model build, and the training worker checks it before
building the model, so a job fails fast with the same message instead of thrashing into the OOM killer.

The limit is what the process can actually get: physical RAM (``os.sysconf``), lowered by a cgroup
memory limit when one is set (containers); on CUDA, the device's total memory. ``BT_MEMORY_LIMIT_MB``
overrides it (a shared machine, or a test). Torch is imported only to count parameters on the meta
device (no memory, no init) and to ask CUDA for its size.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from .config import FRAME_BITS

MIB = 1024.0 * 1024.0
CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


class ModelTooLarge(ValueError):
    """The configuration's estimated memory exceeds this machine's; the message has both and the fix."""


@dataclass(frozen=True)
class MemoryNeed:
    """Bytes: fp32 weights, grads, AdamW moments, activations of one micro-batch; ``how`` names the regime."""

    weights: int
    grads: int
    optimizer: int
    activations: int
    how: str

    @property
    def training(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    @property
    def inference(self) -> int:
        """A model built in-process for evaluate/generate/inspect: its weights plus one block's working set."""
        return self.weights + self.activations // max(1, self._layers)

    _layers: int = 1


def positions(model_cfg) -> int:
    """Sequence positions the block stack runs per window: one per bit (flat), one per frame + start (framed)."""
    if model_cfg.arch == "framed":
        return model_cfg.max_seq_len // FRAME_BITS + 1
    return model_cfg.max_seq_len


def block_values_per_position(model_cfg) -> int:
    """Activation values one block keeps per position for backward, besides attention scores.

    Korthikanti et al. (2022), per token: attention 11 d, two norms 4 d, MLP 3 d + 4 f for a GELU MLP of width
    f (two f-wide tensors: 34 d at f = 4 d). ReLU^2 also keeps two (the ReLU output, squared in place of a
    copy, and the square); SwiGLU four (up, gate, its SiLU, the product)."""
    d, f = model_cfg.d_model, model_cfg.ff_dim
    mlp = {"gelu": 4 * f, "relu2": 4 * f, "swiglu": 8 * f}[model_cfg.mlp_kind]
    return 18 * d + mlp


def estimate(cfg, params: int) -> MemoryNeed:
    """Training memory of ``cfg`` (a RunConfig) with ``params`` parameters (Korthikanti-style count).

    Activations per block per position: :func:`block_values_per_position` plus 5 * heads * keys for attention
    (keys = the chunk window when chunked); bf16 halves them. Framed models run one position per frame and add
    their byte head (256 logits, the prefix log-sum-exp tree and its softmax, float32). Checkpointing keeps only
    block inputs plus one block's working set; reversible keeps two activations per position regardless of depth.
    """
    m, t = cfg.model, cfg.train
    T = positions(m)
    window = m.chunk_size if m.arch == "flat" or m.chunk_size is None else m.chunk_size // FRAME_BITS
    overlap = m.overlap if m.arch == "flat" else m.overlap // FRAME_BITS
    keys = T if m.chunk_size is None else min(T, window + overlap)
    value_bytes = 2 if t.amp == "bf16" else 4
    tokens = t.batch_size * T
    one_block = tokens * (block_values_per_position(m) + 5 * m.nhead * keys) * value_bytes
    head = tokens * 3 * 256 * 4 if m.arch == "framed" else 0
    if m.reversible:
        act, how = 2 * tokens * m.d_model * 4 + one_block, "reversible: flat in depth"
    elif m.checkpointing:
        act, how = m.layers * tokens * m.d_model * 4 + one_block, "checkpointing: block inputs + one block"
    else:
        act, how = m.layers * one_block, "all blocks' activations kept"
    w = params * 4
    return MemoryNeed(weights=w, grads=w, optimizer=2 * w, activations=act + head, how=how,
                      _layers=max(1, m.layers))


@functools.lru_cache(maxsize=64)
def _params(model_json: str) -> int:
    import torch

    from .config import ModelConfig
    from .factory import build_model

    with torch.device("meta"):  # shapes only
        return build_model(ModelConfig.model_validate_json(model_json)).num_parameters()


def count_params(model_cfg) -> int:
    """Exact parameter count of a ModelConfig without allocating it (cached)."""
    return _params(model_cfg.model_dump_json())


def _cgroup_limit() -> int | None:
    for name in CGROUP_FILES:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge sentinel: no limit
            return int(text)
    return None


def memory_limit(device: str = "cpu") -> tuple[int, str]:
    """(bytes, what they are) that a model on ``device`` may use on this machine."""
    override = os.environ.get("BT_MEMORY_LIMIT_MB")
    if override:
        return int(float(override) * MIB), "BT_MEMORY_LIMIT_MB"
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            index = torch.device(device).index or 0
            props = torch.cuda.get_device_properties(index)
            return int(props.total_memory), f"the memory of GPU {index} ({props.name})"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cgroup = _cgroup_limit()
    if cgroup is not None and cgroup < ram:
        return cgroup, "this container's memory limit (cgroup)"
    return ram, "this machine's RAM"


def train_device(cfg) -> str:
    """'cuda' or 'cpu': where ``cfg.train.device`` ('auto' picks CUDA when there is one) puts the model."""
    if cfg.train.device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(cfg.train.device)


def human(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def check_fits(cfg, *, purpose: str = "training", device: str | None = None, params: int | None = None) -> MemoryNeed:
    """Raise ModelTooLarge when ``cfg`` (a RunConfig) needs more than the limit; else return the estimate.

    ``purpose``: 'training' (weights, grads, optimizer, activations) or 'building' (an in-process model
    for inspection/evaluation: weights plus one block's working set).
    """
    # Builds happen on the CPU (checkpoints load there first, the server's models stay there); training goes
    # where train.device puts it.
    device = device or ("cpu" if purpose == "building" else train_device(cfg))
    limit, what = memory_limit(device)
    m = cfg.model
    at_least = ""
    if params is None:
        # Attention projections alone hold 4 * d_model^2 per layer: when that already does not fit, refuse
        # without building the model on the meta device (seconds for hundreds of wide layers).
        params = m.layers * 4 * m.d_model * m.d_model
        need = estimate(cfg, params)
        if (need.training if purpose == "training" else need.inference) > limit:
            at_least = "at least "
        else:
            params = count_params(m)
    need = estimate(cfg, params)
    needed = need.training if purpose == "training" else need.inference
    if needed > limit:
        raise ModelTooLarge(
            f"model too large for this machine: model.layers={m.layers}, model.d_model={m.d_model} "
            f"({at_least}{params:,} parameters) needs {at_least or 'an estimated '}{human(needed)} for {purpose} "
            f"(weights {human(need.weights)}"
            + (f", grads + AdamW {human(need.grads + need.optimizer)}, activations {human(need.activations)}"
               if purpose == "training" else "")
            + f") but {what} is {human(limit)}. Use fewer model.layers or a smaller model.d_model"
            + (" (or a smaller train.batch_size / model.max_seq_len, or model.checkpointing=true, for the "
               "activations)" if purpose == "training" and need.activations > limit // 2 else "")
            + "."
        )
    return need
