"""Damaged files through the MCP tools (issue 13, items 2 and 3): real truncated and garbled files.

* a truncated ``model.safetensors``: evaluate / generate / load_checkpoint answer a ToolError naming the
  checkpoint and the file; list_checkpoints marks it damaged; the other checkpoints still work;
* a damaged ``config.json`` / ``state.json``: the server sets it aside and the next results (get_config,
  train, ...) carry a notice naming the file, where the bad copy was kept and that defaults are in force;
  a restarted server still tells.
"""

from __future__ import annotations

import json

import pytest
from mcp.client import Client

from .conftest import call, error_text, new_server

pytestmark = pytest.mark.anyio

CURRENT = "job-0001/update-0000006"


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


async def test_a_truncated_checkpoint_is_named_and_marked(trained_ws):
    _truncate(trained_ws / "runs" / "job-0001" / "checkpoints" / "update-0000006" / "model.safetensors")
    async with Client(new_server(trained_ws)) as c:
        for tool, args in [("evaluate", {"max_bytes": 256, "compressors": False}),
                           ("generate", {"prompt": "a", "max_bytes": 2}),
                           ("load_checkpoint", {"name": CURRENT})]:
            msg = error_text(await c.call_tool(tool, args))
            assert f"checkpoint '{CURRENT}' is damaged: model.safetensors is truncated" in msg, (tool, msg)
            assert "list_checkpoints()" in msg and "train again" in msg
            assert "SafetensorError" not in msg and str(trained_ws) not in msg
        listed = {ck["name"]: ck for ck in (await call(c, "list_checkpoints"))["checkpoints"]}
        assert listed[CURRENT]["damaged"].startswith("model.safetensors is truncated")
        assert listed["job-0001/update-0000003"].get("damaged") is None
        # An intact checkpoint still serves, and 'latest' skips the damaged one.
        ok = await call(c, "evaluate", {"max_bytes": 256, "compressors": False,
                                        "checkpoint": "job-0001/update-0000003"})
        assert ok["bits_per_byte"] > 0
        latest = (await call(c, "load_checkpoint", {"name": "latest"}))["name"]
        assert latest != CURRENT and listed[latest].get("damaged") is None


def _notice(result) -> str | None:
    first = result.content[0].text if result.content else ""
    return first if first.startswith("NOTICE:") else None


async def test_a_damaged_config_is_announced_until_seen_and_survives_a_restart(tiny_ws):
    (tiny_ws / "config.json").write_text('{"model": {"layers": 2,')  # cut mid-write
    async with Client(new_server(tiny_ws)):
        pass  # the server starts, sets the file aside, and nobody has looked yet
    kept = [p.name for p in tiny_ws.iterdir() if p.name.startswith("config.json.bad-")]
    assert len(kept) == 1
    async with Client(new_server(tiny_ws)) as c:  # a restart: the notice was persisted
        got = await c.call_tool("get_config", {})
        text = _notice(got)
        assert text and "config.json was damaged" in text and kept[0] in text and "DEFAULT config" in text
        assert got.structured_content["notice"] == text
        assert got.structured_content["config"]["model"]["d_model"] == 128  # the default, not TINY's 32
        assert len(text) < 400  # small: agent context is precious
        bad_train = await c.call_tool("train", {"steps": -1})  # an error result carries it too
        assert bad_train.is_error and "config.json was damaged" in bad_train.content[0].text
        assert _notice(await c.call_tool("list_jobs", {}))  # third showing
        assert _notice(await c.call_tool("list_jobs", {})) is None  # shown in get_config, train and 3 results
    assert not (tiny_ws / "notices.json").exists()


async def test_an_invalid_config_names_the_field(tiny_ws):
    cfg = json.loads((tiny_ws / "config.json").read_text())
    cfg["model"]["d_model"] = "wide"
    (tiny_ws / "config.json").write_text(json.dumps(cfg))
    async with Client(new_server(tiny_ws)) as c:
        text = _notice(await c.call_tool("get_config", {}))
    assert text and "config.json was damaged" in text and "model.d_model" in text and "DEFAULT config" in text


async def test_a_damaged_state_is_set_aside_and_announced(trained_ws):
    (trained_ws / "state.json").write_bytes(b"\x00\x00garbage")
    async with Client(new_server(trained_ws)) as c:
        listed = await c.call_tool("list_checkpoints", {})
        text = _notice(listed)
        assert text and "state.json was damaged" in text and "current checkpoint" in text
        assert listed.structured_content.get("current") is None  # the pointer is gone
    kept = [p for p in trained_ws.iterdir() if p.name.startswith("state.json.bad-")]
    assert len(kept) == 1 and kept[0].read_bytes() == b"\x00\x00garbage"
