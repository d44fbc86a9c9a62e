"""Every model tool on a framed model (model.arch='framed'), through the in-process MCP client."""

from __future__ import annotations

import time

import pytest
from mcp.client import Client

from .conftest import TINY, call, error_text, new_server

pytestmark = pytest.mark.anyio
FRAMED = {**TINY, "model": {**TINY["model"], "arch": "framed"}}


async def test_every_model_tool_works_on_a_framed_model(tmp_path):
    ws = tmp_path / "ws"
    async with Client(new_server(ws)) as c:
        await call(c, "patch_config", {"patch": FRAMED})
        slow = await call(c, "patch_config", {"patch": {"model": {"attn_dropout": 0.1}}})
        assert any("attn_dropout=0.1" in n and "math" in n for n in slow["derived"]["notes"])
        cfg = await call(c, "patch_config", {"patch": {"model": {"attn_dropout": 0.0}}})
        assert not any("attn_dropout" in n for n in cfg["derived"].get("notes", []))
        assert cfg["derived"]["params"] > 0
        assert (await call(c, "get_config", {"derived": False}))["config"]["model"]["arch"] == "framed"
        assert "multiple of 9" in error_text(await c.call_tool("patch_config", {"patch": {"model": {
            "max_seq_len": 100}}}))

        job = await call(c, "train", {"steps": 4})
        t0 = time.monotonic()
        while job["active"] and time.monotonic() - t0 < 240:
            job = await call(c, "get_job", {"job_id": job["job_id"], "wait_s": 30})
        assert job["status"] == "completed", job

        val = await call(c, "evaluate", {"max_bytes": 200, "compressors": False})
        assert 0 < val["bits_per_byte"] < 20 and val["parity_bits_per_byte"] < 1e-6  # exact parity
        a = await call(c, "generate", {"prompt": "The ", "max_bytes": 10, "seed": 3})
        b = await call(c, "generate", {"prompt": "The ", "max_bytes": 10, "seed": 3})
        assert a["text"] == b["text"] and a["new_bytes"] == 10 and a["parity_ok"]
        tel = await call(c, "telemetry", {"compute": True})
        assert tel["telemetry"]["attention_entropy"] and len(tel["telemetry"]["attention_entropy"]) == 2

        att = await call(c, "inspect_attention", {"text": "To be, or not to be", "chunk_size": 36})
        assert att["all_stitched_match"] is True and all(layer["chunked"] for layer in att["layers"])
        assert "multiple of 9" in error_text(await c.call_tool("inspect_attention", {"chunk_size": 40}))

        exp = await call(c, "export_int8", {"eval_bytes": 200})
        assert exp["info"]["quantized_linears"] > 0 and abs(exp["bpb_delta"]) < 0.5

        grown = await call(c, "scale_up", {"layers": 3, "d_model": 64, "nhead": 8})
        assert grown["new_model"]["layers"] == 3 and grown["new_model"]["d_model"] == 64
        assert grown["max_logit_change"] < 1e-3 and grown["params_after"] > grown["params_before"]
        grown_cfg = (await call(c, "get_config", {"derived": False}))["config"]["model"]
        assert grown_cfg["arch"] == "framed" and grown_cfg["layers"] == 3
        after = await call(c, "evaluate", {"max_bytes": 200, "compressors": False})
        assert abs(after["bits_per_byte"] - val["bits_per_byte"]) < 1e-3  # function-preserving growth
