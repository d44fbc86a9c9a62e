"""Model FLOPs of a training step, counted analytically, and this machine's measured matmul peak.

Useful FLOPs of one training step (forward + backward; backward = 2x forward, the usual convention):

    train = 3 * forward
    forward = 2 * N_matmul * B * T                  # every weight matrix, once per token
            + 4 * d_model * layers * B * P          # q.k^T and attn.v, over the allowed (query, key) pairs

* ``N_matmul`` = layers * (4 d^2 + 2 d ff [+ d with ACT, the halting projection]) + 2 d (the 2-way head).
  Embedding lookups, biases, LayerNorm, softmax and GELU are not counted (the standard practice).
* ``P`` = the (query, key) pairs the attention pattern allows per sequence: T (T + 1) / 2 for full causal
  attention, the sum over chunks of c (c + 1) / 2 for causal chunks without overlap (plus overlap x chunk
  for overlapping chunks). A dense masked implementation multiplies T^2 pairs; the masked half is waste,
  not useful work, so it is not counted. For non-causal attention P = T^2 and this is PaLM's 12 L T d.
* Recomputation is not useful work: checkpointing and reversible blocks re-run forward passes in
  backward, and those FLOPs are not counted. ACT in training runs every layer for every position (no
  early exit with gradients), so it is counted like a plain stack plus the halting projections.

MFU = useful FLOPs per step / step time / peak, where the peak is the best median throughput of large
square matmuls (fp32 and bf16) measured by :func:`matmul_peak` with the same thread count as the runs.
"""

from __future__ import annotations

import statistics
import time

import torch

from bit_transformer.config import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
    d, ff = cfg.d_model, cfg.ff_dim
    per_layer = 4 * d * d + 2 * d * ff + (d if cfg.act else 0)
    return cfg.layers * per_layer + 2 * d


def attention_pairs(T: int, causal: bool = True, chunk_size: int | None = None, overlap: int = 0) -> int:
    """(query, key) pairs the pattern allows in one sequence of T positions."""
    if chunk_size is None or chunk_size >= T:
        return T * (T + 1) // 2 if causal else T * T
    total = 0
    for start in range(0, T, chunk_size):
        c = min(chunk_size, T - start)
        before = min(overlap, start)  # keys of the previous chunk it may also see
        total += c * before + (c * (c + 1) // 2 if causal else c * c)
    return total


def forward_flops(cfg: ModelConfig, batch: int, seq_len: int, *, chunked: bool = True) -> int:
    """Useful forward FLOPs for (batch, seq_len) bits. ``chunked=False``: the same dims with full attention."""
    chunk = cfg.chunk_size if chunked else None
    pairs = attention_pairs(seq_len, cfg.causal, chunk, cfg.overlap if chunk else 0)
    return 2 * matmul_params(cfg) * batch * seq_len + 4 * cfg.d_model * cfg.layers * batch * pairs


def train_step_flops(cfg: ModelConfig, batch: int, seq_len: int, *, chunked: bool = True) -> int:
    return 3 * forward_flops(cfg, batch, seq_len, chunked=chunked)


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> dict:
    """Median FLOP/s of square ``n x n @ n x n`` matmuls (warm-up excluded); the best size is the peak."""
    by_size = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: packing, thread pool start
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        by_size[n] = 2 * n**3 / statistics.median(times)
    return {"flops": max(by_size.values()), "by_size": {str(k): v for k, v in by_size.items()},
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads()}
