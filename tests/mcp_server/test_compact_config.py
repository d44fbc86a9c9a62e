"""get_config's compact config (mcp_server/inert.py): the fields inert under the current settings are left out,
detail=true shows every field, and patch_config still takes each one."""

from __future__ import annotations

import pytest
from mcp.client import Client

from bit_transformer.config import RunConfig
from mcp_server.inert import RULES, inert_fields

from .conftest import call, new_server

pytestmark = pytest.mark.anyio

# The settings that decide which fields are inert, spelled out (not left to defaults, which change).
PLAIN = {"data": {"source": "builtin"}, "model": {"act": False, "chunk_size": None, "overlap": 0},
         "train": {"lr_schedule": "onecycle", "objective": "next_bit", "plateau_scale_up": False}}
PLAIN_INERT = {"data.paths", "data.hf_name", "data.hf_config", "data.hf_split", "data.text_field",
               "data.hf_data_files", "model.act_threshold", "model.ponder_weight", "model.overlap", "train.patience",
               "train.min_delta", "train.plateau_scale_up", "train.plateau_grow_layers", "train.decay_frac",
               "train.diffusion_schedule", "train.distill_weight", "train.distill_temperature"}


def paths(config: dict) -> set[str]:
    return {f"{section}.{name}" for section, fields in config.items() for name in fields}


def test_every_rule_names_a_real_field():
    real = paths(RunConfig().model_dump(mode="json"))
    named = {p for _, fields in RULES for p in fields}
    assert named <= real, f"rules name fields RunConfig lacks: {named - real}"


@pytest.mark.parametrize(("settings", "inert"), [
    (PLAIN, PLAIN_INERT),
    # every switch on: only what the chosen alternatives leave unused
    ({"data": {"source": "hf"}, "model": {"arch": "flat", "causal": False, "act": True, "max_seq_len": 576,
                                          "chunk_size": 36, "overlap": 9},
      "train": {"objective": "denoise", "lr_schedule": "progressive_plateau", "plateau_scale_up": True}},
     {"data.paths", "train.decay_frac", "train.distill_weight", "train.distill_temperature"}),  # no teacher: denoise
    ({"data": {"source": "files", "paths": ["a.txt"]}, "train": {"lr_schedule": "wsd"}},
     PLAIN_INERT - {"data.paths", "train.decay_frac"}),
    # a teacher: its weight and temperature apply
    ({**PLAIN, "train": {**PLAIN["train"], "teacher": "run/best"}},
     PLAIN_INERT - {"train.distill_weight", "train.distill_temperature"}),
    # plateau without scale-up: its growth step stays inert
    ({**PLAIN, "train": {**PLAIN["train"], "lr_schedule": "progressive_plateau"}},
     PLAIN_INERT - {"train.patience", "train.min_delta", "train.plateau_scale_up"}),
])
def test_inert_fields_follow_the_settings(settings, inert):
    assert inert_fields(RunConfig.model_validate(settings)) == inert


async def test_get_config_leaves_out_exactly_the_inert_fields_and_detail_shows_all(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        await call(c, "patch_config", {"patch": PLAIN})
        compact = await call(c, "get_config", {"derived": False})
        full = await call(c, "get_config", {"derived": False, "detail": True})
        # an inert field is still accepted, and the compact result sent back changes nothing
        hf = await call(c, "patch_config", {"patch": {"data": {"hf_name": "text"}}})
        back = await call(c, "patch_config", {"patch": compact})
        after = await call(c, "get_config", {"derived": False, "detail": True})
    whole = RunConfig.model_validate(full["config"]).model_dump(mode="json")
    assert full["config"] == whole and paths(full["config"]) == paths(RunConfig().model_dump(mode="json"))
    assert paths(whole) - paths(compact["config"]) == PLAIN_INERT
    for section, fields in compact["config"].items():  # what is shown is the config's value
        assert fields == {k: whole[section][k] for k in fields}
    assert "diffusion_schedule" not in compact["choices"]["train"] and "diffusion_schedule" in full["choices"]["train"]
    assert hf["changed"] == [{"path": "data.hf_name", "old": whole["data"]["hf_name"], "new": "text"}]
    assert back["changed_count"] == 0 and after["config"]["data"]["hf_name"] == "text"
