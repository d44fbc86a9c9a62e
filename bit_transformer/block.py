"""The transformer block and the block stack that the flat and framed models share.

Two kinds of block, chosen by ``model.block``:

- ``classic``: LayerNorm, GELU MLP, biases everywhere; the model adds learned absolute positions; GPT-2
  init (the two residual writers shrunk with depth).
- ``modern``: RMSNorm, rotary positions and RMS QK-norm inside attention (``attention.py``), a ReLU^2 MLP,
  no biases, and both residual writers zero at init, so every block starts as the identity.

``model.mlp`` picks the MLP (``auto``: GELU for classic, ReLU^2 for modern; or ``gelu``, ``relu2``, ``swiglu``).

Parts have names: ``block.norm1``, ``block.attn`` (``qkv``, ``out``, modern: ``q_norm``, ``k_norm``),
``block.norm2``, ``block.mlp`` (``up``, swiglu: ``gate``, ``down``), ``block.halt`` (ACT). Scale-up, INT8,
compile and the memory estimate read them by these names. :data:`LEGACY_KEYS` maps the state-dict keys of
checkpoints written before the stack existed (``blocks.N.ff.0``, ``ln_f``, ...) onto them.

Each block exposes its two residual branches (``attn_branch``, ``mlp_branch``) so that the stack can run
them as ordinary residuals, with activation checkpointing, or as a reversible coupling (``reversible.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .act import ACTState, HaltingUnit
from .attention import SelfAttention
from .config import ModelConfig
from .reversible import run_stack


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The block kind's normalisation over ``dim`` features."""
    return nn.RMSNorm(dim) if cfg.block == "modern" else nn.LayerNorm(dim)


class MLP(nn.Module):
    """Feed-forward branch: ``down(act(up(x)))``; SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        bias = cfg.block == "classic"
        self.kind = cfg.mlp_kind
        self.up = nn.Linear(cfg.d_model, cfg.ff_dim, bias=bias)
        self.gate = nn.Linear(cfg.d_model, cfg.ff_dim, bias=bias) if self.kind == "swiglu" else None
        self.down = nn.Linear(cfg.ff_dim, cfg.d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(self.gate(x)) * h
        return self.down(h)


class Block(nn.Module):
    """Pre-norm transformer block, split into its attention and MLP branches."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.norm2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.halt = HaltingUnit(cfg) if cfg.act else None  # ACT: halting probability after this block

    def attn_branch(self, x: torch.Tensor, stats: bool = False, maps: bool = False):
        y, info = self.attn(self.norm1(x), stats=stats, maps=maps)
        return self.drop(y), info

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_branch(x)[0]
        return x + self.mlp_branch(x)

    @property
    def residual_projections(self) -> tuple[nn.Linear, nn.Linear]:
        """The two linears that write into the residual stream (zeroed to make a block an identity)."""
        return self.attn.out, self.mlp.down


class BlockStack(nn.Module):
    """The blocks and the final norm; runs them plainly, checkpointed, reversibly, with or without ACT.

    ``forward(h)`` returns (normed final state, unscaled ponder cost). ``efficient_backward=False`` runs the
    very same computation with ordinary autograd (the reference the gradient tests compare against)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = make_norm(cfg, cfg.d_model)

    def forward(self, h: torch.Tensor, record=None, *, efficient_backward: bool = True,
                caching: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        h, ponder = self._run(h, record, efficient_backward, caching)
        return self.norm(h), ponder

    def _run(self, h: torch.Tensor, record, efficient_backward: bool, caching: bool):
        cfg = self.cfg
        threshold = cfg.act_threshold if cfg.act else None
        if cfg.reversible:  # reversible wins over checkpointing: it already recomputes every block
            res = run_stack(
                list(self.blocks), h, act_threshold=threshold, stats=record is not None,
                maps=cfg.attn_logging, memory_efficient=efficient_backward, early_exit=not caching,
            )
            if record is not None:
                record.attention.extend(res.attention)
                record.halting, record.layers_used = res.halting, res.layers_used
            return res.out, res.ponder
        use_ckpt = (cfg.checkpointing and efficient_backward and self.training and torch.is_grad_enabled()
                    and record is None)
        act = ACTState(h, cfg.layers, threshold, keep_probs=record is not None) if cfg.act else None
        for layer, block in enumerate(self.blocks):
            if act is not None and not torch.is_grad_enabled() and act.all_halted() and not caching:
                break  # early exit: halted positions are frozen and weighted 0 by every later layer
            if record is not None:
                y, info = block.attn_branch(h, stats=True, maps=cfg.attn_logging)
                record.attention.append(info)
                out = h + y
                out = out + block.mlp_branch(out)
            elif use_ckpt:
                out = checkpoint(block, h, use_reentrant=False)
            else:
                out = block(h)
            if act is not None:
                out = torch.where(act.running.unsqueeze(-1), out, h)  # halted positions stop updating
                act.step(layer, out, block.halt(out))
            h = out
        if act is None:
            return h, h.new_zeros(())
        if record is not None:
            record.halting, record.layers_used = act.halting_telemetry()
        return act.acc, act.ponder()


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)


def init_weights(model: nn.Module, stack: BlockStack) -> None:
    """The one initialisation of every model: N(0, 0.02) linears/embeddings and the model's own vectors,
    zero biases, then the residual writers: classic shrinks them with depth (GPT-2), modern zeroes them."""
    model.apply(_init_module)
    for _, p in model.named_parameters(recurse=False):  # vectors the model owns itself (framed: the start frame)
        nn.init.normal_(p, std=0.02)
    for block in stack.blocks:
        for proj in block.residual_projections:
            if stack.cfg.block == "modern":
                nn.init.zeros_(proj.weight)
            else:
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * stack.cfg.layers))
        if block.halt is not None:
            block.halt.reset_parameters()  # _init_module zeroed its bias


# Old state-dict names (before the stack and named parts) -> new ones, by dotted path segment.
LEGACY_KEYS = {"ln1": "norm1", "ln2": "norm2", "ff.0": "mlp.up", "ff.2": "mlp.down"}


def upgrade_key(key: str) -> str:
    """A parameter/module name of an old checkpoint or INT8 artifact -> today's name (others unchanged)."""
    if key == "ln_f" or key.startswith("ln_f."):
        return "stack.norm" + key[len("ln_f"):]
    if not key.startswith("blocks."):
        return key
    parts = key.split(".")
    head, rest = parts[:2], parts[2:]
    for old, new in LEGACY_KEYS.items():
        n = old.count(".") + 1
        if rest[:n] == old.split("."):
            rest = new.split(".") + rest[n:]
            break
    return ".".join(["stack", *head, *rest])


def upgrade_state_dict_hook(module, state_dict, prefix, *_args) -> None:
    """``load_state_dict`` pre-hook: rename old keys in place, so every loader accepts old checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + upgrade_key(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)
