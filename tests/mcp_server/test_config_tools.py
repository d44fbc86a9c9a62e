"""get_config / patch_config / prepare_data through the in-process MCP client."""

from __future__ import annotations

import json
import math

import pytest
from mcp.client import Client

from .conftest import TINY, call, error_text, new_server

pytestmark = pytest.mark.anyio


async def test_tool_listing_has_fixed_names_schemas_and_annotations(tmp_path):
    async with Client(new_server(tmp_path / "ws")) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    for name in ("get_config", "patch_config", "train", "get_job", "list_jobs", "cancel_job", "scale_up", "evaluate",
                 "generate", "export_int8", "list_checkpoints", "load_checkpoint", "telemetry", "playbook_list",
                 "playbook_step", "inspect_attention", "prepare_data"):
        assert name in tools, name
        assert tools[name].output_schema, f"{name} has no output schema"
        assert tools[name].description
    assert tools["get_config"].annotations.read_only_hint is True
    assert tools["get_job"].annotations.read_only_hint is True
    assert tools["patch_config"].annotations.destructive_hint is True
    assert not tools["train"].annotations.read_only_hint  # the protocol default (false) is left off the wire
    train_props = tools["train"].input_schema["properties"]
    assert {"steps", "epochs", "resume", "wait_s"} <= set(train_props)
    assert train_props["steps"]["minimum"] == 1 and train_props["steps"]["type"] == "integer"
    assert "description" in train_props["wait_s"]


async def test_patch_config_returns_changes_and_derived_facts(tmp_path):
    from bit_transformer.config import RunConfig
    from bit_transformer.data import BitWindowDataset, load_corpus
    from bit_transformer.factory import build_model

    ws = tmp_path / "ws"
    async with Client(new_server(ws)) as c:
        out = await call(c, "patch_config", {"patch": TINY, "include_config": True})
        changed = {ch["path"] for ch in out["changed"]}
        assert {"model.layers", "model.d_model", "train.batch_size", "data.max_bytes"} <= changed
        assert out["applied"] is True
        cfg = RunConfig.model_validate(out["config"])
        # Derived facts are true numbers: compare with the engine directly.
        assert out["derived"]["params"] == build_model(cfg.model).num_parameters()
        windows = len(BitWindowDataset(load_corpus(cfg.data, tmp_path / "c").train, cfg.model.max_seq_len))
        plan = out["derived"]["plan"]
        assert out["derived"]["train_windows"] == windows
        assert plan["steps_per_epoch"] == math.ceil(windows / 8)
        assert plan["updates_per_epoch"] == math.ceil(windows / 8)
        assert out["derived"]["memory_mb"] > 0
        # Accumulation divides optimizer updates (task 4).
        acc = await call(c, "patch_config", {"patch": {"accum_steps": 4}, "dry_run": True})
        assert acc["applied"] is False
        assert acc["derived"]["plan"]["updates_per_epoch"] == math.ceil(math.ceil(windows / 8) / 4)
        got = await call(c, "get_config")
        assert got["config"]["train"]["accum_steps"] == 1  # dry run saved nothing
        assert got["derived"]["params"] == out["derived"]["params"]
    saved = json.loads((ws / "config.json").read_text())
    assert saved["model"]["d_model"] == 32


async def test_invalid_patch_changes_nothing_and_names_every_field(tmp_path):
    ws = tmp_path / "ws"
    async with Client(new_server(ws)) as c:
        before = (ws / "config.json").read_text()
        msg = error_text(await c.call_tool("patch_config", {"patch": {"model": {"d_model": 0, "nheads": 2},
                                                                       "train": {"lr": -1}}}))
        for needle in ("model.d_model", "model.nheads", "did you mean 'nhead'", "train.lr", "nothing was changed"):
            assert needle in msg, (needle, msg)
        assert "Traceback" not in msg
        assert (ws / "config.json").read_text() == before
        msg = error_text(await c.call_tool("patch_config", {"patch": {"data": {"source": "files",
                                                                               "paths": ["/etc/passwd"]}}}))
        assert "data.paths[0]" in msg and "outside the workspace" in msg
        msg = error_text(await c.call_tool("patch_config", {"patch": "[1]"}))
        assert "patch" in msg
        msg = error_text(await c.call_tool("patch_config", {}))
        assert "patch" in msg and "required" in msg.lower()
        assert (ws / "config.json").read_text() == before


async def test_prepare_data_second_load_is_a_cache_hit(tmp_path):
    ws = tmp_path / "ws"
    async with Client(new_server(ws)) as c:
        await call(c, "patch_config", {"patch": {"data": {"max_bytes": 3000}}})
        first = await call(c, "prepare_data")
        second = await call(c, "prepare_data")
    assert second["cache_hit"] is True
    assert first["n_bytes"] == second["n_bytes"] == 3000
    assert first["train_bytes"] == 2700 and first["val_bytes"] == 300
    assert second["cache_path"].startswith("cache/")


async def test_files_source_inside_workspace(tmp_path):
    ws = tmp_path / "ws"
    async with Client(new_server(ws)) as c:
        (ws / "data").mkdir()
        (ws / "data" / "a.txt").write_text("hello bits " * 200)
        out = await call(c, "patch_config", {"patch": {"data": {"source": "files", "paths": ["data/*.txt"]}},
                                             "include_config": True})
        assert out["config"]["data"]["paths"] == ["data/*.txt"]  # stored as given (portable)
        prep = await call(c, "prepare_data")
        assert prep["n_bytes"] == len("hello bits " * 200)


async def test_a_reset_shows_new_null_and_get_config_lists_enum_choices(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        reset = await call(c, "patch_config", {"patch": {"data": {"max_bytes": None}}})
        got = await call(c, "get_config", {"derived": False})
        bad = error_text(await c.call_tool("patch_config", {"patch": {"data": {"source": "web"}}}))
    assert reset["changed"] == [{"path": "data.max_bytes", "old": 8000, "new": None}]  # said, not left out
    assert got["choices"]["data.source"] == "builtin|files|hf" and got["choices"]["train.amp"] == "bf16|none"
    assert "source" in bad  # the values get_config lists are the ones validation accepts
    for value in got["choices"]["data.source"].split("|"):
        from bit_transformer.config import DataConfig

        DataConfig.model_validate({"source": value, "paths": ["x"]})
