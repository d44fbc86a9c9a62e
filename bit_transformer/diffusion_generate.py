"""Sampling from a denoising BitTransformerLM: from all-masked bits to text in ``steps`` rounds.

The output window (prompt frames + ``max_bytes`` new frames) starts with every unknown data bit masked.
Round k goes from diffusion time ``t = 1 - k/steps`` to ``s = 1 - (k+1)/steps``: the model reads the
window once, and each masked data bit is revealed with the forward process's probability
``(gamma(t) - gamma(s)) / gamma(t)``, its value drawn from the model's prediction (temperature,
seeded generator). Early rounds reveal few bits from a mostly-masked window, later rounds fill in the
rest with more context: coarse to fine. The last round reveals everything left.

Fixed bits (the prompt as a prefix, or any positions given for infilling) are never masked or changed.
Parity is never sampled: once a frame's eight data bits are known its parity bit is set from them; in
a frame whose parity is fixed, the last unknown data bit is set so that the frame passes its check.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from .bits import parity_errors, text_to_bits
from .config import FRAME_BITS, SafetyConfig
from .diffusion import MASK, Schedule, set_parity, unmask_probability
from .generate import GenerationResult, _device
from .safety import SafetyGate
from .telemetry import lz_complexity, summarize, symbiosis


def _force_fixed_parity(x: torch.Tensor, fixed: torch.Tensor) -> None:
    """In frames whose parity bit is fixed, set the one remaining masked data bit to satisfy it."""
    frames, fix = x.view(-1, FRAME_BITS), fixed.view(-1, FRAME_BITS)
    data = frames[:, : FRAME_BITS - 1]
    one_left = (data == MASK).sum(-1) == 1
    todo = one_left & fix[:, FRAME_BITS - 1]
    for f in torch.nonzero(todo).flatten().tolist():
        row = data[f]
        j = int(torch.nonzero(row == MASK)[0])
        known_sum = int((row * (row != MASK)).sum())
        frames[f, j] = (int(frames[f, FRAME_BITS - 1]) - known_sum) % 2


@torch.inference_mode()
def generate_diffusion(
    model: torch.nn.Module,
    prompt: str = "",
    *,
    max_bytes: int = 64,
    steps: int = 32,
    temperature: float = 1.0,
    seed: int | None = None,
    schedule: Schedule = "linear",
    fixed_bits: dict[int, int] | None = None,
    safety: SafetyConfig | None = None,
    gate: SafetyGate | None = None,
) -> GenerationResult:
    """Generate ``max_bytes`` bytes after ``prompt`` (a fixed prefix) by ``steps`` rounds of unmasking.

    ``fixed_bits`` maps bit positions of the whole window (prompt included) to values that stay fixed,
    for infilling. The window must fit the model: ``(len(prompt bytes) + max_bytes) * 9 <= max_seq_len``.
    """
    if getattr(model.cfg, "causal", True):
        raise ValueError("mode='diffusion' needs a denoising model (model.causal=false, train.objective='denoise'); "
                         "this model is causal: use mode='causal'")
    if max_bytes < 0 or steps < 1:
        raise ValueError("max_bytes must be >= 0 and steps >= 1")
    if seed is None:
        seed = secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed)
    device = _device(model)
    prompt_bits = torch.from_numpy(text_to_bits(prompt).astype(np.int64))
    n_bits = prompt_bits.numel() + max_bytes * FRAME_BITS
    limit = model.cfg.max_seq_len - model.cfg.max_seq_len % FRAME_BITS
    if n_bits > limit:
        raise ValueError(f"prompt + max_bytes is {n_bits // FRAME_BITS} bytes but a denoising model generates "
                         f"within one window of {limit // FRAME_BITS} bytes (max_seq_len={model.cfg.max_seq_len}); "
                         "shorten the prompt or lower max_bytes")
    x = torch.full((n_bits,), MASK, dtype=torch.long)
    fixed = torch.zeros(n_bits, dtype=torch.bool)
    x[: prompt_bits.numel()], fixed[: prompt_bits.numel()] = prompt_bits, True
    for pos, value in (fixed_bits or {}).items():
        if not 0 <= pos < n_bits or value not in (0, 1):
            raise ValueError(f"fixed_bits: position {pos} must be in [0, {n_bits}) and its value 0 or 1")
        x[pos], fixed[pos] = value, True
    is_data = torch.arange(n_bits) % FRAME_BITS < FRAME_BITS - 1
    p1 = torch.full((n_bits,), float("nan"), dtype=torch.float64)  # the model's P(1) when each bit was drawn

    was_training = model.training
    model.eval()
    try:
        given = x.clone()

        def settle(bits: torch.Tensor) -> torch.Tensor:  # parity from complete frames; fixed bits win
            return torch.where(fixed, given, set_parity(bits[None])[0])

        x = settle(x)
        for k in range(steps):
            _force_fixed_parity(x, fixed)
            t, s = 1.0 - k / steps, 1.0 - (k + 1) / steps
            masked = (x == MASK) & is_data
            u = torch.rand(n_bits, generator=gen, dtype=torch.float64)  # drawn every round: the stream stays aligned
            v = torch.rand(n_bits, generator=gen, dtype=torch.float64)
            last = k == steps - 1  # the final round reveals whatever is still masked
            reveal = masked if last else masked & (u < unmask_probability(t, s, schedule))
            if reveal.any():
                logits = model(x[None].to(device)).logits[0].double().cpu()
                probs = torch.softmax(logits / max(temperature, 1e-6), -1)[:, 1]
                drawn = (logits[:, 1] > logits[:, 0]).long() if temperature <= 0 else (v < probs).long()
                x = torch.where(reveal, drawn, x)
                p1 = torch.where(reveal, torch.softmax(logits, -1)[:, 1], p1)
            x = settle(x)
        out = model(x[None].to(device), return_telemetry=True)
        summary = summarize(x[None].to(device), out.logits.float(), out.telemetry)
    finally:
        model.train(was_training)

    bits = x.numpy().astype(np.uint8)
    new = bits[prompt_bits.numel():]
    raw = np.packbits(new.reshape(-1, FRAME_BITS)[:, :8], axis=1).tobytes() if new.size else b""
    text = raw.decode("utf-8", errors="replace")
    sampled = ~fixed & is_data
    C = S = None
    if sampled.any():
        C = float(lz_complexity(torch.from_numpy(new.astype(np.float32))))
        S = float(symbiosis(p1[sampled].float(), x[sampled].float()))
    if gate is None:
        gate = SafetyGate((safety or SafetyConfig()).model_copy(update={"burn_in": 0}))
    verdict = gate.observe(C=C, S=S)
    return GenerationResult(
        text=text, prompt=prompt, full_text=prompt + text, new_bytes=len(raw),
        parity_ok=not bool(parity_errors(bits).any()),
        replaced=text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd"),
        seed=seed, C=C, S=S, telemetry=summary, verdict=verdict, mode="diffusion",
    )
