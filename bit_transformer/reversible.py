"""Reversible (RevNet) execution of a BitTransformerLM block stack.

Two residual streams both start as the embedding. Block l maps (x1, x2) to

    y1 = x1 + F_l(x2)      F = the block's attention branch (norm1 -> attention -> dropout)
    y2 = x2 + G_l(y1)      G = the block's MLP branch (norm2 -> MLP -> dropout)

and is inverted by x2 = y2 - G_l(y1), x1 = y1 - F_l(x2). The head reads the mean (y1 + y2) / 2 of the
last block's streams (with ACT: the halting-weighted mix of the per-layer means). A block whose two
residual projections (``Block.residual_projections``, weight and bias) are zero is the identity on both
streams, as in the standard stack.

:class:`RevStackFunction` runs the whole stack under ``no_grad`` and keeps only the last block's two
streams (plus, with ACT, the cumulative halting mass and one layer count per position). Backward walks
the blocks in reverse, rebuilding each block's inputs from its outputs while it back-propagates through
F and G, so activation memory does not grow with depth; the price is one extra forward of every block.
RNG states (CPU, and CUDA for CUDA tensors) are saved before every F and G and restored for the
recomputation, so dropout masks replay identically; the autocast state of the forward is re-entered.
Reconstruction is exact up to floating-point rounding (about 1e-7 relative in float32; under bf16
autocast the recomputed branches can differ by a bf16 rounding step, so gradients agree to ~1e-2).

With ACT a position that has halted gets mask m = 0 (``y = x + m * F``), which keeps the coupling
invertible; see ``act.py`` for why the accumulator needs no storage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .act import ACTState, act_terms, layer_masks

_AUTOCAST_DEVICES = ("cpu", "cuda")


@dataclass
class StackSpec:
    """What a reversible pass needs besides tensors (passed through autograd as a plain object)."""

    blocks: list[nn.Module]
    act_threshold: float | None = None  # None: no ACT
    stats: bool = False  # collect attention statistics (telemetry)
    maps: bool = False  # ... and full attention maps
    rng: bool = False  # training (dropout may be active): save and replay RNG states
    params: list[list[torch.Tensor]] = field(default_factory=list)  # per block, those requiring grad
    telemetry: StackResult | None = None  # set by RevStackFunction.forward, taken by run_stack


@dataclass
class StackResult:
    out: torch.Tensor  # (B, T, D) what the final LayerNorm and head read
    ponder: torch.Tensor  # scalar
    attention: list = field(default_factory=list)  # AttentionStats per computed layer (telemetry)
    halting: torch.Tensor | None = None  # ACT telemetry: (B, T, L)
    layers_used: torch.Tensor | None = None  # ACT telemetry: (B, T)


def _capture_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _restore_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _autocast_state() -> list[tuple[str, bool, torch.dtype]]:
    return [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES]


def _autocast(state: list[tuple[str, bool, torch.dtype]]) -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    for device, enabled, dtype in state:
        if enabled:
            stack.enter_context(torch.autocast(device_type=device, dtype=dtype))
    return stack


def _masked(y: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    return y if m is None else m * y


def stack_forward(
    spec: StackSpec, x: torch.Tensor, *, rng_log: list | None = None, early_exit: bool = False
) -> tuple[torch.Tensor, torch.Tensor, StackResult, ACTState | None]:
    """The coupling run forward once. Under ordinary autograd this *is* the reference implementation;
    :class:`RevStackFunction` calls it under no_grad with ``rng_log`` to record the RNG states.

    Returns the last streams (x1, x2), the result (mean of streams, or the ACT mix) and the ACT state.
    """
    x1 = x2 = x
    act = ACTState(x, len(spec.blocks), spec.act_threshold, spec.stats) if spec.act_threshold is not None else None
    result = StackResult(out=x, ponder=x.new_zeros(()))
    for layer, block in enumerate(spec.blocks):
        if act is not None and early_exit and act.all_halted():
            break  # halted positions are frozen and weighted 0 from here on: nothing left can change
        m = act.mask(x.dtype) if act is not None else None
        state_f = _capture_rng(x.device) if rng_log is not None else None
        f, info = block.attn_branch(x2, stats=spec.stats, maps=spec.stats and spec.maps)
        if spec.stats:
            result.attention.append(info)
        y1 = x1 + _masked(f, m)
        state_g = _capture_rng(x.device) if rng_log is not None else None
        y2 = x2 + _masked(block.mlp_branch(y1), m)
        if rng_log is not None:
            rng_log.append((state_f, state_g))
        if act is not None:
            h = 0.5 * (y1 + y2)
            act.step(layer, h, block.halt(h))
        x1, x2 = y1, y2
    if act is not None:
        result.out, result.ponder = act.acc, act.ponder()
        if spec.stats:
            result.halting, result.layers_used = act.halting_telemetry()
    else:
        result.out = 0.5 * (x1 + x2)
    return x1, x2, result, act


class RevStackFunction(torch.autograd.Function):
    """Memory-saving forward/backward of the reversible stack. Inputs: (x, spec, *flat block params).

    Outputs: without ACT (y1, y2), the last block's streams; with ACT (acc, ponder_cost).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: StackSpec, *params: torch.Tensor):
        rng_log: list | None = [] if spec.rng else None
        ctx.spec, ctx.rng_log, ctx.autocast = spec, rng_log, _autocast_state()
        y1, y2, result, act = stack_forward(spec, x, rng_log=rng_log)
        if spec.stats:  # telemetry for the caller, without the outputs (no reference cycle)
            spec.telemetry = StackResult(x.new_zeros(()), x.new_zeros(()), result.attention, result.halting,
                                         result.layers_used)
        if act is None:
            ctx.save_for_backward(y1, y2)
            return y1, y2
        ctx.save_for_backward(y1, y2, act.cum, act.n_used)
        return act.acc, result.ponder

    @staticmethod
    def backward(ctx, *grads):
        spec: StackSpec = ctx.spec
        act = spec.act_threshold is not None
        if act:
            y1, y2, cum, n_used = ctx.saved_tensors
            d_acc, d_ponder = grads
            d_acc = torch.zeros_like(cum).unsqueeze(-1).expand_as(y1) if d_acc is None else d_acc
            # ponder = mean over positions of (N + sum of remainders)
            d_rem = (0.0 if d_ponder is None else d_ponder) / n_used.numel()
            dy1, dy2 = torch.zeros_like(y1), torch.zeros_like(y2)
            d_cum = torch.zeros_like(cum)
        else:
            y1, y2 = ctx.saved_tensors
            dy1 = torch.zeros_like(y1) if grads[0] is None else grads[0]
            dy2 = torch.zeros_like(y2) if grads[1] is None else grads[1]
        device = y1.device
        outer_rng = _capture_rng(device) if spec.rng else None
        param_grads: list[list[torch.Tensor | None]] = [[None] * len(ps) for ps in spec.params]

        def accumulate(layer: int, gs) -> None:
            slot = param_grads[layer]
            for i, g in enumerate(gs):
                if g is not None:
                    slot[i] = g if slot[i] is None else slot[i] + g

        with torch.enable_grad(), _autocast(ctx.autocast):
            for layer in reversed(range(len(spec.blocks))):
                block, params = spec.blocks[layer], spec.params[layer]
                m = None
                if act:
                    running, cont, halts = layer_masks(n_used, layer)
                    m = running.unsqueeze(-1).to(y1.dtype)
                    # ACT side of the layer: out += w * h, cum += p, ponder += R.
                    a1, a2 = y1.detach().requires_grad_(), y2.detach().requires_grad_()
                    h = 0.5 * (a1 + a2)
                    p = block.halt(h)
                    cum_prev = (cum - torch.where(cont, p.detach(), 0.0)).requires_grad_()
                    w, cum_new, remainder = act_terms(p, cum_prev, cont, halts)
                    gs = torch.autograd.grad(
                        [w.unsqueeze(-1) * h, cum_new, remainder.sum()],
                        [a1, a2, cum_prev, *params],
                        [d_acc, d_cum, torch.as_tensor(d_rem, device=device, dtype=remainder.dtype)],
                        allow_unused=True,
                    )
                    dy1, dy2, d_cum = dy1 + gs[0], dy2 + gs[1], gs[2]
                    accumulate(layer, gs[3:])
                    cum = cum_prev.detach()
                # G: rebuild x2 = y2 - G(y1) and back-propagate dy2 through G.
                if spec.rng:
                    _restore_rng(ctx.rng_log[layer][1], device)
                z1 = y1.detach().requires_grad_()
                g = _masked(block.mlp_branch(z1), m)
                gs = torch.autograd.grad(g, [z1, *params], dy2, allow_unused=True)
                dz1 = dy1 + gs[0]
                accumulate(layer, gs[1:])
                x2 = (y2 - g.detach()).detach()
                del g
                # F: rebuild x1 = y1 - F(x2) and back-propagate dz1 through F.
                if spec.rng:
                    _restore_rng(ctx.rng_log[layer][0], device)
                x2 = x2.requires_grad_()
                f = _masked(block.attn_branch(x2)[0], m)
                gs = torch.autograd.grad(f, [x2, *params], dz1, allow_unused=True)
                dx2 = dy2 + gs[0]
                accumulate(layer, gs[1:])
                x1 = (y1 - f.detach()).detach()
                del f
                y1, y2, dy1, dy2 = x1, x2.detach(), dz1, dx2
        if outer_rng is not None:
            _restore_rng(outer_rng, device)
        # Every parameter gets a gradient (zeros where unused, e.g. the last halting unit) so DDP
        # never sees a parameter without one.
        flat = [
            torch.zeros_like(p) if g is None else g
            for ps, gs in zip(spec.params, param_grads, strict=True)
            for p, g in zip(ps, gs, strict=True)
        ]
        return (dy1 + dy2, None, *flat)


def run_stack(
    blocks: list[nn.Module],
    x: torch.Tensor,
    *,
    act_threshold: float | None,
    stats: bool = False,
    maps: bool = False,
    memory_efficient: bool = True,
    early_exit: bool = True,
) -> StackResult:
    """Run the reversible stack on the embedding x (B, T, D).

    With grad enabled and ``memory_efficient`` it goes through :class:`RevStackFunction`; otherwise the
    same coupling runs under ordinary autograd (the reference), and without grad ACT exits early once
    every position has halted (unless ``early_exit=False``: a KV cache needs every layer's keys).
    """
    params = [[p for p in b.parameters() if p.requires_grad] for b in blocks]
    spec = StackSpec(list(blocks), act_threshold, stats, maps, any(b.training for b in blocks), params)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(params))
    if not (needs_grad and memory_efficient):
        return stack_forward(spec, x, early_exit=early_exit and not torch.is_grad_enabled())[2]
    a, b = RevStackFunction.apply(x, spec, *[p for ps in params for p in ps])
    if act_threshold is None:
        out = StackResult(out=0.5 * (a + b), ponder=x.new_zeros(()))
    else:
        out = StackResult(out=a, ponder=b)
    if spec.telemetry is not None:
        out.attention, out.halting, out.layers_used = (
            spec.telemetry.attention, spec.telemetry.halting, spec.telemetry.layers_used)
        spec.telemetry = None
    return out
