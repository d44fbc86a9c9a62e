"""Helpers for the gradient and memory tests (reversible, ACT, activation checkpointing, combinations).

Tiny configs and seeded models, a loss that includes the ponder cost, gradients under a fixed RNG seed
(so dropout masks match between runs), the plain-autograd reference, and the bytes autograd saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bit_transformer import BitTransformerLM, ModelConfig
from bit_transformer.factory import build_model


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(layers=3, d_model=32, nhead=4, dim_feedforward=64, max_seq_len=72, dropout=0.1)
    base.update(kw)
    return ModelConfig(**base)


def make_model(cfg: ModelConfig, seed: int = 0) -> BitTransformerLM:
    torch.manual_seed(seed)
    return build_model(cfg)


def random_bits(batch: int = 2, length: int = 45, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (batch, length), generator=g)


def spread_halting(model: BitTransformerLM, std: float = 100.0, bias: float = 0.0, seed: int = 7) -> None:
    """Halting units that give positions very different halting layers (the init halts nobody early)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            w = block.halt.proj.weight
            w.copy_(torch.randn(w.shape, generator=g) * std / w.shape[1] ** 0.5)
            block.halt.proj.bias.fill_(bias)


def loss_of(model: BitTransformerLM, bits: torch.Tensor, out=None) -> torch.Tensor:
    out = model(bits) if out is None else out
    ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, 2), bits[:, 1:].reshape(-1))
    return ce + model.cfg.ponder_weight * out.ponder_cost


def grads(model: BitTransformerLM, bits: torch.Tensor, seed: int = 1, **fwd) -> dict[str, torch.Tensor]:
    """Gradients of loss_of with a fixed RNG seed, so dropout masks match between runs."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(bits, **fwd)
    loss_of(model, bits, out).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def max_rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over parameters of max|a - b| / max|b|; both must hold the same parameters."""
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-20)).item() for k in b)


def reference_grads(model: BitTransformerLM, bits: torch.Tensor, seed: int = 1) -> dict[str, torch.Tensor]:
    model.efficient_backward = False
    try:
        return grads(model, bits, seed)
    finally:
        model.efficient_backward = True


def saved_activation_bytes(model: BitTransformerLM, bits: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (parameters excluded; each storage counted once)."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(bits)
        loss = loss_of(model, bits, out)
    loss.backward()
    return sum(seen.values())
