"""Config validation: invalid combinations fail with messages that name the fields."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bit_transformer.config import (
    ModelConfig,
    RunConfig,
    SafetyConfig,
    TrainConfig,
    stored_model_config,
    stored_run_config,
)
from tests.flat import flat_cfg


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
    assert flat_cfg(chunk_size=16, overlap=15).overlap == 15


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
    cfg = flat_cfg(chunk_size=16, overlap=4)
    with pytest.raises(ValidationError, match="overlap"):
        cfg.overlap = 32


def test_attn_logging_resolution_task12():
    assert ModelConfig().attn_logging is True
    assert ModelConfig(chunk_size=36).attn_logging is False
    assert ModelConfig(chunk_size=36, full_attn_logging=True).attn_logging is True
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


def test_defaults_are_the_small_budget_cpu_recipe():
    run = RunConfig()
    model, train = run.model, run.train
    assert (model.arch, model.block, model.mlp_kind, model.dropout) == ("framed", "modern", "relu2", 0.0)
    assert (train.amp, train.optimizer, train.lr_schedule) == ("none", "muon", "wsd")
    assert (model.nhead, model.max_seq_len, train.batch_size, train.warmup_frac) == (4, 288, 16, 0.05)
    assert (model.causal, train.objective, train.compress_prob) == (True, "next_bit", 0.0)


def test_a_stored_config_keeps_the_defaults_it_was_written_with():
    # a checkpoint from before block/optimizer existed ran the flat classic model with AdamW
    old = {"model": {"layers": 2, "d_model": 16, "nhead": 2}, "train": {"lr": 1e-3}}
    cfg = stored_run_config(old)
    assert (cfg.model.arch, cfg.model.block, cfg.model.dropout) == ("flat", "classic", 0.1)
    assert (cfg.train.optimizer, cfg.train.amp, cfg.train.lr_schedule, cfg.train.lr) == ("adamw", "bf16", "onecycle",
                                                                                        1e-3)
    assert stored_model_config(old["model"]) == cfg.model
    written = RunConfig(model=ModelConfig(layers=2, d_model=16, nhead=2))  # today's: every field is stored
    assert stored_run_config(written.model_dump(mode="json")) == written
    assert RunConfig.model_validate(old).model.arch == "framed"  # a config a user writes gets today's defaults


@pytest.mark.parametrize("tree", [
    {"train": {"objective": "denoise"}},
    {"model": {"causal": False}, "train": {"objective": "denoise"}},
    {"train": {"compress_prob": 0.5}},
    {"model": {"chunk_size": 64}},
    {"model": {"max_seq_len": 100}},
])
def test_flat_only_settings_on_the_framed_default_say_to_set_arch_flat(tree):
    with pytest.raises(ValidationError) as err:
        RunConfig.model_validate(tree)
    assert "arch='flat'" in str(err.value)
    flat = {**tree, "model": {**tree.get("model", {}), "arch": "flat", "block": "classic"}}
    if tree.get("train", {}).get("objective") == "denoise":
        flat["model"]["causal"] = False
    RunConfig.model_validate(flat)  # and that fix is enough
