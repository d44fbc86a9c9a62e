"""Run-length coding round trips, the serialized stream format, and the cosine compression ramp."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bit_transformer.bits import ParityError, parity_errors, text_to_bits
from bit_transformer.compression import (
    MAX_RUN,
    compress_batch,
    compress_bits,
    compression_ratio,
    decompress_batch,
    decompress_bits,
    rle_decode,
    rle_encode,
)
from bit_transformer.schedule import cosine_ramp

bit_lists = st.lists(st.integers(0, 1), max_size=600)
# long runs are where splitting matters: build rows from (value, run length) pairs
run_rows = st.lists(st.tuples(st.integers(0, 1), st.integers(1, 400)), max_size=12).map(
    lambda runs: [v for v, n in runs for _ in range(n)]
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(bit_lists, run_rows), st.integers(1, 300))
def test_rle_roundtrip_and_invariants(bits, max_run):
    values, lengths = rle_encode(torch.tensor(bits, dtype=torch.long), max_run)
    assert torch.equal(rle_decode(values, lengths), torch.tensor(bits, dtype=torch.long))
    assert int(lengths.sum()) == len(bits)
    if len(bits):
        assert int(lengths.min()) >= 1 and int(lengths.max()) <= max_run
        # adjacent pairs share a value only where a long run was split, i.e. the earlier piece is full
        same = values[1:] == values[:-1]
        assert (lengths[:-1][same] == max_run).all()


@settings(max_examples=150, deadline=None)
@given(st.one_of(bit_lists, run_rows))
def test_stream_roundtrip(bits):
    row = torch.tensor(bits, dtype=torch.long)
    stream = compress_bits(row)
    assert stream.dtype == torch.long and stream.ndim == 1 and len(stream) % 9 == 0
    assert not parity_errors(stream).any()  # every run is a valid codec frame
    assert torch.equal(decompress_bits(stream), row)


def test_known_encoding():
    values, lengths = rle_encode([0, 0, 0, 1, 1, 0])
    assert values.tolist() == [0, 1, 0] and lengths.tolist() == [3, 2, 1]
    values, lengths = rle_encode([1] * 300)
    assert values.tolist() == [1, 1, 1] and lengths.tolist() == [128, 128, 44]
    values, lengths = rle_encode([1] * 300, max_run=100)
    assert lengths.tolist() == [100, 100, 100]
    # one run of 5 ones: value bit 1, length-1 = 4 = 0000100, parity of 1000_0100 = 0
    assert compress_bits([1] * 5).tolist() == [1, 0, 0, 0, 0, 1, 0, 0, 0]
    assert compress_bits([0] * MAX_RUN).tolist() == [0, 1, 1, 1, 1, 1, 1, 1, 1]
    assert compress_bits([]).numel() == 0 and decompress_bits(torch.zeros(0)).numel() == 0
    with pytest.raises(ValueError, match="0 or 1"):
        rle_encode([0, 2])
    with pytest.raises(ValueError, match="max_run"):
        rle_encode([0], max_run=0)


def test_corrupted_stream_is_detected():
    stream = compress_bits(torch.tensor([0] * 10 + [1] * 3 + [0] * 7))
    stream[9 + 2] ^= 1
    with pytest.raises(ParityError) as err:
        decompress_bits(stream)
    assert err.value.byte_offset == 1  # the second run
    with pytest.raises(ValueError, match="multiple of 9"):
        decompress_bits(stream[:-1])


def test_batch_helpers_and_ratio():
    batch = torch.stack([torch.zeros(256, dtype=torch.long), (torch.arange(256) // 64) % 2])
    rows = compress_batch(batch)
    assert [len(r) for r in rows] == [2 * 9, 4 * 9]
    assert torch.equal(decompress_batch(rows), batch)
    assert compression_ratio(batch[0]) == pytest.approx(256 / 18)
    assert compression_ratio(batch) == pytest.approx(512 / 54)
    assert compression_ratio(torch.arange(18) % 2) == pytest.approx(1 / 9)  # alternating bits: runs of 1
    text = torch.from_numpy(text_to_bits("The quick brown fox jumps over the lazy dog.").astype(np.int64))
    assert compression_ratio(text) < 1  # text has short runs: RLE expands it
    assert compression_ratio([]) == 1.0
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        compress_batch(torch.zeros(5))


def test_cosine_ramp_endpoints_midpoint_and_monotone():
    assert cosine_ramp(0, 0.0, 0.5, 100) == 0.0
    assert cosine_ramp(100, 0.0, 0.5, 100) == 0.5
    assert cosine_ramp(1000, 0.0, 0.5, 100) == 0.5
    assert cosine_ramp(-5, 0.1, 0.5, 100) == 0.1
    assert cosine_ramp(50, 0.1, 0.5, 100) == pytest.approx(0.3)
    assert cosine_ramp(25, 0.0, 1.0, 100) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    values = [cosine_ramp(s, 0.0, 0.5, 37) for s in range(40)]
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[1] < 0.01  # gentle start, the point of the ramp
    down = [cosine_ramp(s, 1.0, 0.2, 10) for s in range(11)]
    assert all(b <= a for a, b in itertools.pairwise(down)) and down[-1] == 0.2
    assert cosine_ramp(0, 0.0, 0.5, 0) == 0.5  # no warm-up: straight to the end value
