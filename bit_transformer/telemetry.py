"""K, C, S telemetry of bit streams and of a model's predictions.

Three numbers describe a stream of bits and how well a model agrees with it:

* **K, negentropy**: ``K = 1 - H2(p1)`` with ``p1`` the share of ones and
  ``H2(p) = -p log2 p - (1-p) log2(1-p)``. 1 for a constant stream, 0 for a balanced one.
  Differentiable when given predicted probabilities instead of hard bits.
* **C, normalized Lempel-Ziv complexity**: ``C = c(n) * log2(n) / n`` with ``c(n)`` the LZ76 phrase
  count (Kaspar-Schuster parsing). Near 0 for constant or periodic streams, about 1 for coin flips
  (slightly above 1 is possible for short random streams). A discrete count: monitor-only, no gradient.
* **S, symbiosis**: ``S = exp(-mean_t KL(obs_t || pred_t))`` where ``obs_t`` is the observed bit
  distribution at position t (the point mass on the bit that occurred, or Bernoulli(b_t) for soft
  targets) and ``pred_t = Bernoulli(q_t)`` the model's prediction. For hard bits this is the geometric
  mean probability the model gave the real bits: ``S = exp(-cross-entropy in nats)``; 1 for a perfect
  model, 0.5 for a coin-flip predictor (hence the safety gate's 0.5 floor). Differentiable in ``q``.

Which terms may enter the loss (``TrainConfig.lambda_K/lambda_C/lambda_S``) is documented in
:func:`telemetry_loss`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

from .model import ForwardTelemetry
from .records import TelemetrySummary

log = logging.getLogger(__name__)

_EPS = 1e-7  # keeps log2 finite (and gradients bounded) at p = 0 or 1


def _as_float_tensor(bits) -> torch.Tensor:
    if isinstance(bits, torch.Tensor):
        return bits if bits.is_floating_point() else bits.float()
    return torch.as_tensor(np.asarray(bits), dtype=torch.float32)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """``H2(p)`` in bits, elementwise. Exact at p in {0, 1}; gradients come from a clamped copy."""
    pc = p.clamp(_EPS, 1 - _EPS)
    clamped = -(pc * torch.log2(pc) + (1 - pc) * torch.log2(1 - pc))
    exact = -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / math.log(2)
    return clamped + (exact - clamped).detach()


def negentropy(bits: torch.Tensor) -> torch.Tensor:
    """K = 1 - H2(p1), p1 = mean of ``bits`` over the last dim; returns shape ``bits.shape[:-1]``.

    ``bits`` may be 0/1 values or probabilities P(bit = 1); with probabilities the result is
    differentiable. Constant stream -> 1; balanced stream (random, alternating) -> 0.
    """
    return 1.0 - binary_entropy(_as_float_tensor(bits).mean(dim=-1))


def lz76_phrases(bits) -> int:
    """LZ76 phrase count c(n) of one row (Kaspar-Schuster parsing; values >= 0.5 count as 1).

    Each phrase is the longest prefix of the rest that already occurs starting earlier (it may
    overlap itself), plus one new symbol. Example: 0001101001000101 -> 0|001|10|100|1000|101 = 6.
    """
    arr = bits.detach().cpu().numpy() if isinstance(bits, torch.Tensor) else np.asarray(bits)
    s = (arr.reshape(-1) >= 0.5).astype(np.uint8).tobytes()
    n = len(s)
    if n == 0:
        return 0
    count, pos = 1, 1  # the first symbol is always a phrase of its own
    while pos < n:
        # k = length of the copy found so far, starting at j < pos (it may overlap the phrase itself)
        k, j = 0, -1
        while pos + k < n:
            if j >= 0 and s[j + k] == s[pos + k]:  # the current source extends by one symbol
                k += 1
                continue
            # otherwise look for a later source of the k + 1 symbols; bytes.find runs in C
            j = s.find(s[pos : pos + k + 1], j + 1, pos + k)
            if j == -1:
                break
            k += 1
        count += 1  # phrase = k copied symbols + 1 new one (or the copied tail of the row)
        pos += k + 1
    return count


def lz_complexity(bits) -> float | torch.Tensor:
    """C = c(n) * log2(n) / n, the normalized LZ76 complexity, over the last dim.

    One row (1-D) -> float; batched input -> float tensor of shape ``bits.shape[:-1]``. Values are
    thresholded at 0.5, so probabilities are read as their most likely bit. Monitor-only: a phrase
    count has no gradient. Constant/alternating -> ~0 (c = 2 or 3); random -> ~1. C = 0 for n < 2.
    """
    t = bits if isinstance(bits, torch.Tensor) else torch.as_tensor(np.asarray(bits))
    n = t.shape[-1] if t.ndim else 0
    scale = math.log2(n) / n if n >= 2 else 0.0
    if t.ndim <= 1:
        return lz76_phrases(t) * scale
    rows = t.detach().reshape(-1, n).cpu()
    vals = [lz76_phrases(r) * scale for r in rows]
    return torch.tensor(vals, dtype=torch.float32).reshape(t.shape[:-1])


def symbiosis(pred_probs: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """S = exp(-mean_t KL(Bernoulli(b_t) || Bernoulli(q_t))) over the last dim.

    ``pred_probs`` = q_t, the predicted P(bit = 1) for each position, same shape as ``bits`` (the bits
    it predicted, already aligned). For hard 0/1 bits the KL is the cross-entropy ``-log q_t(b_t)``, so
    S = exp(-cross-entropy in nats). Differentiable in ``pred_probs``. Returns shape ``bits.shape[:-1]``.
    """
    q = _as_float_tensor(pred_probs).clamp(_EPS, 1 - _EPS)
    b = _as_float_tensor(bits).to(q.device)
    if q.shape != b.shape:
        raise ValueError(f"pred_probs {tuple(q.shape)} and bits {tuple(b.shape)} must have the same shape")
    kl = torch.special.xlogy(b, b) - b * torch.log(q) + torch.special.xlogy(1 - b, 1 - b) - (1 - b) * torch.log1p(-q)
    return torch.exp(-kl.mean(dim=-1))


def lz_proxy(pred_probs: torch.Tensor) -> torch.Tensor:
    """Differentiable stand-in for C: mean predictive entropy ``mean_t H2(q_t)`` in bits, over the last dim.

    Normalized LZ76 complexity converges to the entropy rate of a stationary ergodic source (Ziv 1978);
    the model's mean conditional entropy is its own estimate of that rate, and unlike the phrase count it
    has a gradient. Used only by :func:`telemetry_loss`; reported C values are always true LZ76.
    """
    return binary_entropy(_as_float_tensor(pred_probs)).mean(dim=-1)


def _predicted_p1(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] != 2:
        raise ValueError(f"logits must end in 2 classes, got shape {tuple(logits.shape)}")
    return torch.softmax(logits.float(), dim=-1)[..., 1]


@torch.no_grad()
def summarize(bits: torch.Tensor, logits: torch.Tensor, record: ForwardTelemetry | None) -> TelemetrySummary:
    """Telemetry of one forward: ``bits`` (B, T) model input, ``logits`` (B, T, 2) where t predicts t + 1.

    K and C are means over rows; S compares the predictions at 0..T-2 with the bits at 1..T-1.
    ``record`` (from ``model(bits, return_telemetry=True)``) adds per-head attention entropy and ACT stats.
    """
    if bits.ndim == 1:
        bits, logits = bits[None], logits[None]
    if bits.shape[-1] < 2:
        raise ValueError("telemetry needs at least 2 bits per row (S compares predictions with the next bit)")
    x = bits.float()
    q = _predicted_p1(logits).to(x.device)
    attention: list[list[float]] = []
    mean_layers = halting = None
    if record is not None:
        attention = [[float(h) for h in stats.entropy.float().cpu()] for stats in record.attention if stats is not None]
        if record.layers_used is not None:
            mean_layers = float(record.layers_used.float().mean())
        if record.halting is not None:
            halting = float(record.halting.float().mean())
    return TelemetrySummary(
        K_input=float(negentropy(x).mean()),
        C_input=float(lz_complexity(x).mean()),
        K_pred=float(negentropy(q).mean()),
        C_pred=float(lz_complexity(q).mean()),
        S=float(symbiosis(q[:, :-1], x[:, 1:]).mean()),
        attention_entropy=attention,
        mean_layers_used=mean_layers,
        halting_mean=halting,
    )



def sample_telemetry(model: torch.nn.Module, dataset, windows: int = 2) -> TelemetrySummary | None:
    """Telemetry of one eval-mode forward on the first ``windows`` windows of ``dataset`` (no grad, no RNG draws).

    A monitor: a failure is logged and gives None, never an exception into the training loop.
    """
    try:
        x = torch.stack([dataset[i][0] for i in range(min(windows, len(dataset)))])
        x = x.to(next(model.parameters()).device)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(x, return_telemetry=True)
                return summarize(x, out.logits.float(), out.telemetry)
        finally:
            model.train(was)
    except Exception as err:
        log.warning("telemetry sample failed: %r", err)
        return None


def telemetry_loss(
    logits: torch.Tensor,
    bits: torch.Tensor,
    lambda_K: float = 0.0,
    lambda_C: float = 0.0,
    lambda_S: float = 0.0,
    *,
    aligned: bool = False,
) -> torch.Tensor:
    """Differentiable telemetry regularizer to add to the cross-entropy loss (scalar, mean over rows).

    ``bits`` are the model's input (logits at t are compared with bits at t + 1); pass ``aligned=True``
    when ``bits`` are already the targets of each logit position. With q_t = predicted P(1):

    * K term, ``lambda_K * (K(q) - K(b))**2``: differentiable; zero when the predictions' balance of
      ones is as ordered as the data's (keeps the predicted marginal from drifting).
    * C term, ``lambda_C * (1 - mean_t H2(q_t))``: C itself (an LZ76 phrase count) is monitor-only, so
      the loss uses the differentiable proxy :func:`lz_proxy` (mean predictive entropy in bits, the
      entropy-rate estimate that normalized LZ76 converges to). Penalizing low complexity is a
      confidence penalty: it discourages collapse onto degenerate, repetitive predictions. Keep it small.
    * S term, ``lambda_S * (1 - S)``: differentiable; rewards agreement with the observed bits.

    Returns an exact zero (no graph) when all weights are 0.
    """
    if not (lambda_K or lambda_C or lambda_S):
        return logits.new_zeros((), dtype=torch.float32)
    if logits.ndim == 2:
        logits, bits = logits[None], bits[None]
    if not aligned:
        logits, bits = logits[:, :-1], bits[:, 1:]
    q = _predicted_p1(logits)
    b = bits.to(q.device).float()
    total = q.new_zeros(())
    if lambda_K:
        total = total + lambda_K * (negentropy(q) - negentropy(b)).pow(2).mean()
    if lambda_C:
        total = total + lambda_C * (1.0 - lz_proxy(q)).mean()
    if lambda_S:
        # S via log_softmax for hard targets: exact and stable even for very confident logits
        ce = F.cross_entropy(logits.float().reshape(-1, 2), b.long().reshape(-1), reduction="none")
        s = torch.exp(-ce.view(b.shape).mean(dim=-1))
        total = total + lambda_S * (1.0 - s).mean()
    return total
