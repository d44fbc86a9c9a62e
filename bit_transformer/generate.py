"""Parity-constrained sampling from a BitTransformerLM.

Each new byte is sampled bit by bit: the model samples the 8 data bits (temperature, top-p, seeded
generator), and the 9th bit is *set* to their even parity, never sampled. Every generated frame
therefore passes the parity check and the stream always decodes; bytes that do not form valid UTF-8
are replaced by U+FFFD, not an error.

The model sees at most ``max_seq_len`` bits, in a window that starts on a frame's first bit (so the phase
embedding, position mod 9, stays right). Once the stream outgrows it, the window jumps forward by a quarter
of its length (whole frames; ``context_start``), so every prediction sees between 3/4 and all of
``max_seq_len`` bits. With ``cache=True`` (the default) the positions inside one window are decoded with a KV
cache: the flat model runs one position per new bit, the framed model one trunk step per new byte (its eight
data-bit conditionals all come from that step's byte distribution); each jump re-prefills the cache. With
``cache=False`` every bit re-runs the whole window; both give the same text for the same seed.

After sampling, the safety gate judges the output on its C and S floors: C is the LZ complexity of the
generated bits (degenerate repetition has low C) and S the symbiosis between the model's predicted
probabilities for the sampled data bits and the bits actually drawn.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Callable

import numpy as np
import torch
from pydantic import BaseModel, Field

from .bits import parity_errors, text_to_bits
from .config import FRAME_BITS, SafetyConfig
from .framed import DATA_BITS, PARITY_LOGIT, prefix_levels
from .kv_cache import kv_cache
from .model import BitTransformerLM
from .safety import GateDecision, SafetyGate
from .telemetry import TelemetrySummary, lz_complexity, summarize, symbiosis


class GenerationResult(BaseModel):
    text: str = Field(description="The generated continuation (invalid UTF-8 replaced by U+FFFD).")
    prompt: str
    full_text: str = Field(description="prompt + text")
    new_bytes: int
    parity_ok: bool = Field(description="Every frame of prompt + continuation passes its parity check.")
    replaced: int = Field(0, description="U+FFFD characters that invalid UTF-8 produced in `text`.")
    seed: int = Field(description="Seed of the sampling generator (pass it back to reproduce).")
    C: float | None = Field(None, description="LZ complexity of the generated bits.")
    S: float | None = Field(None, description="Symbiosis of predicted vs sampled data bits.")
    telemetry: TelemetrySummary
    verdict: GateDecision
    mode: str = Field("causal", description="causal (bit by bit) or diffusion (a denoising model's rounds).")
    stopped: str | None = Field(None, description="Why fewer than max_bytes were made (a time limit), if so.")


def window_start(n_bits: int, max_len: int) -> int:
    """First bit of the frame-aligned window of at most ``max_len`` bits that ends at ``n_bits``."""
    if n_bits <= max_len:
        return 0
    return math.ceil((n_bits - max_len) / FRAME_BITS) * FRAME_BITS


def context_start(n_bits: int, max_len: int) -> int:
    """First bit of the window that predicts bit ``n_bits``: 0 until the stream outgrows ``max_len`` bits,
    then a multiple of the jump (a quarter of the window in whole frames), so that a KV cache is re-filled
    once per jump rather than once per frame."""
    if n_bits <= max_len:
        return 0
    jump = max(FRAME_BITS, (max_len // 4) // FRAME_BITS * FRAME_BITS)
    return math.ceil((n_bits - max_len) / jump) * jump


class _Uncached:
    """Next-bit logits by re-running the model on the whole window."""

    def __init__(self, model: torch.nn.Module, device: torch.device, max_len: int):
        self.model, self.device, self.max_len = model, device, max_len

    def __call__(self, stream: list[int]) -> torch.Tensor:
        start = context_start(len(stream), self.max_len)
        x = torch.tensor(stream[start:], dtype=torch.long, device=self.device)[None]
        return self.model(x).logits[0, -1].float()


class _FlatCached(_Uncached):
    """One new position per bit against the KV cache; a jump of the window re-prefills it."""

    def __init__(self, model, device, max_len, cache):
        super().__init__(model, device, max_len)
        self.cache, self.start, self.fed = cache, -1, 0

    def __call__(self, stream: list[int]) -> torch.Tensor:
        start = context_start(len(stream), self.max_len)
        if start != self.start:
            self.cache.reset()
            self.start, self.fed = start, start
        x = torch.tensor(stream[self.fed :], dtype=torch.long, device=self.device)[None]
        self.fed = len(stream)
        return self.model(x).logits[0, -1].float()


class _FramedCached(_Uncached):
    """One trunk step per new frame; the frame's bit conditionals come from its byte distribution."""

    def __init__(self, model, device, max_len, cache):
        super().__init__(model, device, max_len)
        self.cache, self.start, self.frames = cache, -1, 0  # frames: trunk inputs fed after the start frame
        self.levels: list[torch.Tensor] = []

    def __call__(self, stream: list[int]) -> torch.Tensor:
        n = len(stream)
        start = context_start(n, self.max_len)
        k, j = divmod(n - start, FRAME_BITS)  # predicting bit j of window frame k
        if start != self.start:  # prefill: [start, frames 0..k-1]
            self.cache.reset()
            self.start = start
            frames = torch.tensor(stream[start : start + k * FRAME_BITS], dtype=torch.long, device=self.device)
            self._byte_logits(self.model.trunk(frames.reshape(1, k, FRAME_BITS), start=True)[0][0, -1])
            self.frames = k
        elif k > self.frames:  # the previous frame is complete: one trunk step
            lo = start + (k - 1) * FRAME_BITS
            frame = torch.tensor(stream[lo : lo + FRAME_BITS], dtype=torch.long, device=self.device)
            self._byte_logits(self.model.trunk(frame.reshape(1, 1, FRAME_BITS), start=False)[0][0, -1])
            self.frames = k
        if j == DATA_BITS:  # the parity bit: the same fixed logits as the model's forward
            one = (2.0 * (sum(stream[n - DATA_BITS : n]) % 2) - 1.0) * PARITY_LOGIT
            return torch.tensor([-one, one])  # (never sampled: generate sets parity itself)
        prefix = 0
        for b in stream[n - j : n]:
            prefix = prefix * 2 + b
        return self.levels[j][prefix]  # (L_{j+1}[2p], L_{j+1}[2p + 1]), as framed.frame_bit_logits

    def _byte_logits(self, z: torch.Tensor) -> None:
        # once per frame: the log-sum-exp tree, grouped by prefix (level j+1 as 2^j pairs)
        self.levels = [lv.reshape(1 << j, 2) for j, lv in enumerate(prefix_levels(z.float()))]


def sample_bit(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Draw a bit from 2-way ``logits``. temperature <= 0 is greedy; top-p keeps the likelier bit alone
    when its probability already reaches ``top_p``."""
    l0, l1 = logits.detach().double().cpu().tolist()
    return _sample_pair(l0, l1, temperature, top_p, generator)


def _p1(l0: float, l1: float) -> float:
    """softmax([l0, l1])[1] in plain floats (per-bit torch calls dominate sampling time for small models)."""
    x = l1 - l0
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _sample_pair(l0: float, l1: float, temperature: float, top_p: float, generator: torch.Generator) -> int:
    u = float(torch.rand((), generator=generator, dtype=torch.float64))  # always drawn: stream stays aligned
    if temperature <= 0:
        return int(l1 > l0)
    p1 = _p1(l0 / temperature, l1 / temperature)
    if max(p1, 1.0 - p1) >= top_p:
        return int(p1 > 0.5) if p1 != 0.5 else int(u < 0.5)
    return int(u < p1)


def _device(model: torch.nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    prompt: str,
    *,
    max_bytes: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    safety: SafetyConfig | None = None,
    gate: SafetyGate | None = None,
    mode: str = "auto",
    steps: int = 32,
    cache: bool = True,
    time_limit_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GenerationResult:
    """Continue ``prompt`` by ``max_bytes`` bytes.

    ``mode``: ``causal`` samples bit by bit (causal models), ``diffusion`` unmasks a whole window in
    ``steps`` rounds (denoising models, see ``diffusion_generate``), ``auto`` picks the model's own.

    ``seed`` makes the output reproducible (same model, prompt and settings -> same text). The verdict
    comes from ``gate`` when given (its EMA and burn-in carry over between calls); otherwise from a
    fresh gate built from ``safety`` with burn-in 0, because a single generation is judged on its own.

    ``time_limit_s`` stops causal sampling at the first byte boundary past that many seconds of ``clock``
    (callers with a request timeout, like the MCP tool, pass one); ``stopped`` then says so and how to go on.
    """
    causal = getattr(model.cfg, "causal", True)
    if mode not in ("auto", "causal", "diffusion"):
        raise ValueError(f"mode must be 'auto', 'causal' or 'diffusion', got {mode!r}")
    if mode == "diffusion" or (mode == "auto" and not causal):
        from .diffusion_generate import generate_diffusion  # local: it imports this module

        if top_p != 1.0:
            raise ValueError("top_p applies to causal sampling only: leave it at 1 with mode='diffusion'")
        return generate_diffusion(model, prompt, max_bytes=max_bytes, steps=steps, temperature=temperature,
                                  seed=seed, safety=safety, gate=gate)
    if not causal:
        raise ValueError("mode='causal' needs a causal model; this one is a denoising model (model.causal=false): "
                         "use mode='diffusion'")
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if seed is None:  # a fresh seed, reported back; 63 bits so it fits a signed 64-bit integer anywhere
        seed = secrets.randbits(63)
    gen = torch.Generator().manual_seed(seed)
    device = _device(model)
    max_len = model.cfg.max_seq_len - model.cfg.max_seq_len % FRAME_BITS
    stream = text_to_bits(prompt).astype(np.int64).tolist()
    n_prompt = len(stream)
    data_bits: list[int] = []
    data_p1: list[float] = []  # model's untempered P(bit = 1) for each sampled data bit

    was_training = model.training
    model.eval()
    try:
        cached = cache and max_bytes > 0 and isinstance(model, BitTransformerLM)  # stand-ins re-run the window
        with kv_cache(model) if cached else contextlib.nullcontext() as kv:
            if kv is None:
                next_logits = _Uncached(model, device, max_len)
            elif model.cfg.arch == "framed":
                next_logits = _FramedCached(model, device, max_len, kv)
            else:
                next_logits = _FlatCached(model, device, max_len, kv)
            deadline = None if time_limit_s is None else clock() + time_limit_s
            made = _sample(next_logits, stream, max_bytes, temperature, top_p, gen, data_bits, data_p1,
                           lambda: deadline is not None and clock() >= deadline)
        start = window_start(len(stream), max_len)
        window = torch.tensor(stream[start:] or [0] * FRAME_BITS, dtype=torch.long, device=device)[None]
        out = model(window, return_telemetry=True)
        summary = summarize(window, out.logits.float(), out.telemetry)
    finally:
        model.train(was_training)

    all_bits = np.asarray(stream, dtype=np.uint8)
    new = all_bits[n_prompt:]
    raw = np.packbits(new.reshape(-1, FRAME_BITS)[:, :8], axis=1).tobytes() if new.size else b""
    text = raw.decode("utf-8", errors="replace")
    C = S = None
    if data_bits:
        C = float(lz_complexity(torch.from_numpy(new.astype(np.float32))))
        S = float(symbiosis(torch.tensor(data_p1, dtype=torch.float32), torch.tensor(data_bits, dtype=torch.float32)))
    if gate is None:
        gate = SafetyGate((safety or SafetyConfig()).model_copy(update={"burn_in": 0}))
    verdict = gate.observe(C=C, S=S)
    return GenerationResult(
        text=text,
        prompt=prompt,
        full_text=prompt + text,
        new_bytes=len(raw),
        parity_ok=not bool(parity_errors(all_bits).any()),
        replaced=text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd"),
        seed=seed,
        C=C,
        S=S,
        telemetry=summary,
        verdict=verdict,
        stopped=None if made == max_bytes else (
            f"time limit of {time_limit_s:g} s reached after {made} of {max_bytes} bytes; to continue, call "
            "generate again with prompt=full_text (or ask for fewer bytes)"),
    )


def _sample(next_logits, stream: list[int], max_bytes: int, temperature: float, top_p: float,
            gen: torch.Generator, data_bits: list[int], data_p1: list[float],
            out_of_time: Callable[[], bool] = lambda: False) -> int:
    """Append up to ``max_bytes`` frames to ``stream`` (8 sampled data bits, then their parity: set, never
    sampled), stopping at a byte boundary once ``out_of_time()``; returns the bytes made."""
    for made in range(max_bytes):
        if out_of_time():
            return made
        frame: list[int] = []
        for _phase in range(8):
            # empty prompt: the very first bit has no context, so it is a fair coin
            l0, l1 = next_logits(stream).tolist() if stream else (0.0, 0.0)
            bit = _sample_pair(l0, l1, temperature, top_p, gen)
            data_p1.append(_p1(l0, l1))
            frame.append(bit)
            stream.append(bit)
        stream.append(sum(frame) % 2)  # the frame always decodes
        data_bits.extend(frame)
    return max_bytes
