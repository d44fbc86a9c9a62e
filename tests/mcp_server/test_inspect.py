"""inspect_attention: SDPA facts, chunking, mask cache reuse, stitched maps vs dense, logging default."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mcp.client import Client

from .conftest import TINY, call, error_text, new_server

pytestmark = pytest.mark.anyio
TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture
async def flat_trained_ws(tmp_path: Path) -> Path:
    """A workspace whose checkpoint is the flat model (bit-level chunks: tasks 10-12 are about them)."""
    ws = tmp_path / "ws"
    async with Client(new_server(ws)) as c:
        await call(c, "patch_config", {"patch": {**TINY, "model": {**TINY["model"], "arch": "flat",
                                                                   "block": "classic"}}})
        view = await call(c, "train", {"steps": 3})
        deadline = time.monotonic() + 240  # a cap for a slow machine, not a speed assertion
        while view["active"] and time.monotonic() < deadline:
            view = await call(c, "get_job", {"job_id": view["job_id"], "wait_s": 30})
        assert view["status"] == "completed", view
    return ws


async def test_full_attention_uses_sdpa_is_causal_without_mask(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        r = await call(c, "inspect_attention", {"text": TEXT})
    assert r["seq_len"] == 72 and r.get("chunk_size") is None  # cut to max_seq_len = 8 bytes
    assert "fresh model" in r["model_source"]
    for layer in r["layers"]:
        assert (layer["backend"], layer["is_causal"], layer["dense_mask"], layer["chunked"]) == ("sdpa", True, False,
                                                                                                False)
        assert len(layer["entropy_bits"]) == 4 and layer.get("stitched_matches_dense") is None
    assert r["full_attn_logging_resolved"] is True and r["telemetry_returns_maps"] is True
    assert r["mask_cache_second_pass"]["misses"] == 0 and r["mask_cache_reused"] is True


async def test_chunked_attention_stitches_like_dense_and_reuses_masks(flat_trained_ws):
    async with Client(new_server(flat_trained_ws)) as c:
        r = await call(c, "inspect_attention", {"text": TEXT, "chunk_size": 27, "overlap": 9, "include_maps": True})
        assert r["model_source"].startswith("checkpoint job-0001/")
        assert r["chunk_size"] == 27 and r["overlap"] == 9
        for layer in r["layers"]:
            assert layer["chunked"] is True and layer["dense_mask"] is False and layer["backend"] == "sdpa"
            assert layer["stitched_matches_dense"] is True
            assert layer["max_abs_diff"] < 1e-4 and layer["edge_max_abs_diff"] < 1e-4
            rows = layer["map"]
            assert len(rows) == 72 and all(abs(sum(row) - 1) < 1e-3 for row in rows)
            assert rows[30][0] == 0.0  # row 30 (chunk 1, starts at 27) sees keys >= 18 only
        assert r["all_stitched_match"] is True
        assert r["mask_cache_second_pass"] == {"hits": r["mask_cache_second_pass"]["hits"], "misses": 0,
                                               "entries": r["mask_cache_second_pass"]["entries"]}
        assert r["mask_cache_second_pass"]["hits"] > 0
        # Task 12: full T x T logging is off by default when chunked, on when asked for.
        assert r["full_attn_logging"] is None and r["full_attn_logging_resolved"] is False
        assert r["telemetry_returns_maps"] is False
        on = await call(c, "inspect_attention", {"text": TEXT, "chunk_size": 27, "full_attn_logging": True})
        assert on["full_attn_logging_resolved"] is True and on["telemetry_returns_maps"] is True
        one = await call(c, "inspect_attention", {"text": TEXT, "layer": 1, "chunk_size": 0})
        assert [x["layer"] for x in one["layers"]] == [1] and one["layers"][0]["chunked"] is False


async def test_config_chunk_settings_apply_by_default(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        await call(c, "patch_config", {"patch": {"chunk_size": 36}})
        r = await call(c, "inspect_attention", {"text": TEXT})
        assert r["chunk_size"] == 36 and all(x["chunked"] for x in r["layers"])
        assert r["full_attn_logging_resolved"] is False


async def test_broken_stitching_is_detected(tiny_ws, monkeypatch):
    from bit_transformer.attention import SelfAttention

    def unshifted(self, weights, T):  # the old bug: clamp the start but not the source columns
        C, ov = self.chunk_size, self.overlap
        canvas = weights.new_zeros(*weights.shape[:2], T, T)
        for ci in range(weights.shape[2]):
            s = ci * C
            rows, start, end = min(C, T - s), max(s - ov, 0), min(s + C, T)
            canvas[:, :, s:s + rows, start:end] = weights[:, :, ci, :rows, : end - start]
        return canvas

    monkeypatch.setattr(SelfAttention, "_stitch", unshifted)
    async with Client(new_server(tiny_ws)) as c:
        r = await call(c, "inspect_attention", {"text": TEXT, "chunk_size": 27, "overlap": 9})
    assert r["all_stitched_match"] is False
    assert all(x["edge_max_abs_diff"] > 1e-3 for x in r["layers"])


async def test_inspect_attention_errors(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        msg = error_text(await c.call_tool("inspect_attention", {"chunk_size": 10, "overlap": 10}))
        assert "overlap" in msg and "chunk_size" in msg
        msg = error_text(await c.call_tool("inspect_attention", {"layer": 7}))
        assert "layer 7 out of range" in msg and "2 layers" in msg
        assert "text" in error_text(await c.call_tool("inspect_attention", {"text": ""}))
        assert "no model yet" not in error_text(await c.call_tool("inspect_attention", {"checkpoint": "x/y"}))
