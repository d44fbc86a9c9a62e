"""Config validation: invalid combinations fail with messages that name the fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bit_transformer.config import ModelConfig, RunConfig, SafetyConfig, TrainConfig


def _message(**kw) -> str:
    with pytest.raises(ValidationError) as err:
        ModelConfig(**kw)
    return str(err.value)


def test_d_model_must_divide_by_nhead():
    msg = _message(d_model=130, nhead=8)
    assert "d_model (130)" in msg and "nhead (8)" in msg
    assert "nhead=5" in msg  # suggests the largest divisor <= 8
    assert ModelConfig(d_model=128, nhead=8).head_dim == 16


def test_overlap_must_be_smaller_than_chunk_size():
    msg = _message(chunk_size=16, overlap=16)
    assert "overlap (16)" in msg and "chunk_size (16)" in msg
    assert ModelConfig(chunk_size=16, overlap=15).overlap == 15


def test_overlap_without_chunk_size():
    msg = _message(overlap=4)
    assert "overlap" in msg and "chunk_size" in msg


def test_several_problems_reported_together():
    msg = _message(d_model=130, nhead=8, overlap=4)
    assert "d_model" in msg and "overlap needs chunk_size" in msg


def test_unknown_field_is_named():
    with pytest.raises(ValidationError) as err:
        ModelConfig(d_modle=64)
    assert "d_modle" in str(err.value)
    with pytest.raises(ValidationError, match="lr_scheduel"):
        TrainConfig(lr_scheduel="cosine")
    with pytest.raises(ValidationError, match="modle"):
        RunConfig.model_validate({"modle": {}})


def test_assignment_is_validated():
    cfg = ModelConfig(chunk_size=16, overlap=4)
    with pytest.raises(ValidationError, match="overlap"):
        cfg.overlap = 32


def test_attn_logging_resolution_task12():
    assert ModelConfig().attn_logging is True
    assert ModelConfig(chunk_size=32).attn_logging is False
    assert ModelConfig(chunk_size=32, full_attn_logging=True).attn_logging is True
    assert ModelConfig(full_attn_logging=False).attn_logging is False


def test_defaults_and_ranges():
    cfg = ModelConfig(d_model=64, nhead=4)
    assert cfg.ff_dim == 256
    assert ModelConfig(d_model=64, nhead=4, dim_feedforward=96).ff_dim == 96
    safety = SafetyConfig()
    assert (safety.decay, safety.burn_in, safety.c_floor, safety.s_floor, safety.loss_threshold) == (
        0.9, 10, 0.3, 0.5, None
    )
    with pytest.raises(ValidationError, match="dropout"):
        ModelConfig(dropout=1.0)
    with pytest.raises(ValidationError, match="quantization"):
        TrainConfig(qat=True)
    assert RunConfig.model_validate_json(RunConfig().model_dump_json()) == RunConfig()
