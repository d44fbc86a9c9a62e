"""Bit codec: 9 bits per byte (8 data MSB-first + even parity), strict and lenient decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bit_transformer.bits import (
    ParityError,
    batch_bits_to_text,
    batch_text_to_bits,
    bits_to_bytes,
    bits_to_text,
    bytes_to_bits,
    decode_report,
    parity_errors,
    set_parity,
    text_to_bits,
)


def test_known_frame_layout():
    # 'A' = 0x41 = 01000001: two ones -> parity 0; 'C' = 0x43 = 01000011: three ones -> parity 1
    assert text_to_bits("A").tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0]
    assert text_to_bits("C").tolist() == [0, 1, 0, 0, 0, 0, 1, 1, 1]
    assert bytes_to_bits(b"\xff").tolist() == [1] * 8 + [0]
    bits = text_to_bits("é")  # two UTF-8 bytes
    assert bits.dtype == np.uint8 and bits.shape == (18,)
    assert (bits.reshape(-1, 9).sum(axis=1) % 2 == 0).all()


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_roundtrip_arbitrary_unicode(text):
    bits = text_to_bits(text)
    assert len(bits) == 9 * len(text.encode("utf-8"))
    assert bits_to_text(bits) == text
    assert bits_to_text(torch.from_numpy(bits).long()) == text  # tensors work too
    assert bits_to_text(bits.tolist()) == text  # and plain lists


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.data())
def test_every_single_bit_flip_is_detected_with_its_byte_offset(data, draw):
    bits = bytes_to_bits(data)
    position = draw.draw(st.integers(0, len(bits) - 1))
    flipped = bits.copy()
    flipped[position] ^= 1
    with pytest.raises(ParityError) as err:
        bits_to_bytes(flipped)
    assert err.value.byte_offset == position // 9
    assert err.value.bad_offsets == [position // 9]
    assert f"byte offset {position // 9}" in str(err.value)


def test_exhaustive_flips_of_a_short_text():
    bits = text_to_bits("bits: ok ✓")
    for position in range(len(bits)):
        flipped = bits.copy()
        flipped[position] ^= 1
        with pytest.raises(ParityError) as err:
            bits_to_text(flipped)
        assert err.value.byte_offset == position // 9


def test_lenient_mode_replaces_and_reports():
    bits = text_to_bits("hello world")
    bits[2 * 9 + 3] ^= 1  # byte 2 ('l')
    bits[7 * 9 + 8] ^= 1  # byte 7 ('o'): only its parity bit
    data, bad = bits_to_bytes(bits, strict=False)
    assert bad == [2, 7]
    assert data == b"he?lo w?rld"
    report = decode_report(bits)
    assert report.bad_offsets == [2, 7] and not report.ok
    assert report.text == "he?lo w?rld"
    assert bits_to_text(bits, strict=False) == "he?lo w?rld"
    with pytest.raises(ParityError) as err:
        bits_to_text(bits)
    assert err.value.byte_offset == 2 and err.value.bad_offsets == [2, 7]


def test_lenient_invalid_utf8_is_replaced_not_raised():
    bits = bytes_to_bits(b"ok\xff")
    assert bits_to_text(bits, strict=False) == "ok\ufffd"
    with pytest.raises(UnicodeDecodeError):
        bits_to_text(bits)


def test_batched_tensors_roundtrip_and_parity():
    texts = ["abc", "", "ünïcødé"]
    batch = batch_text_to_bits(texts)
    assert batch.dtype == torch.long and batch.shape == (3, 9 * len("ünïcødé".encode()))
    # shorter rows are padded with zero frames, which are parity-valid and decode to NUL bytes
    assert [t.rstrip("\x00") for t in batch_bits_to_text(batch)] == texts
    assert not parity_errors(batch).any()
    batch[1, 9 + 4] ^= 1
    errs = parity_errors(batch)
    assert errs.shape == (3, batch.shape[1] // 9)
    assert np.argwhere(errs).tolist() == [[1, 1]]
    fixed = set_parity(batch)
    assert not parity_errors(fixed).any()
    changed = (fixed != batch).nonzero().tolist()
    assert changed == [[1, 9 + 8]]  # only the parity bit of the damaged frame was rewritten
    with pytest.raises(ValueError, match="pad_to"):
        batch_text_to_bits(["toolong"], pad_to=9)


def test_rejects_partial_frames_and_non_bits():
    with pytest.raises(ValueError, match="multiple of 9"):
        bits_to_text([0] * 10)
    with pytest.raises(ValueError, match="0 or 1"):
        bits_to_text([2] * 9)
