"""A denoising model through the MCP tools: patch rules, train, evaluate (a bound), generate, export."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
from mcp.client import Client

from .conftest import TINY, call, error_text, new_server

pytestmark = pytest.mark.anyio

DENOISE = copy.deepcopy(TINY)
DENOISE["model"].update(arch="flat", causal=False)  # denoising is bidirectional: the flat model
DENOISE["train"]["objective"] = "denoise"


async def test_a_denoising_model_through_the_tools(tmp_path: Path):
    async with Client(new_server(tmp_path / "ws")) as c:
        msg = error_text(await c.call_tool("patch_config", {"patch": {"model": {"causal": False}}}))
        assert "arch='flat'" in msg and "denoise" in msg  # the framed default is causal by construction
        msg = error_text(await c.call_tool("patch_config", {"patch": {"model": {"arch": "flat", "causal": False}}}))
        assert "train.objective" in msg and "model.causal" in msg and "denoise" in msg
        await call(c, "patch_config", {"patch": DENOISE})
        job = await call(c, "train", {"steps": 6})
        deadline = time.monotonic() + 300  # a generous cap for a slow machine, not a speed assertion
        view = job
        while view["status"] in ("starting", "running") and time.monotonic() < deadline:
            view = await call(c, "get_job", {"job_id": job["job_id"], "wait_s": 30})
        assert view["status"] == "completed", view

        ev = await call(c, "evaluate", {"max_bytes": 144, "compressors": False})
        assert ev["objective"] == "denoise" and ev["bound"] is True
        assert 0 < ev["bits_per_byte"] < 12 and ev["parity_bits_per_byte"] == 0.0

        a = await call(c, "generate", {"prompt": "th", "max_bytes": 5, "seed": 3, "steps": 4})
        b = await call(c, "generate", {"prompt": "th", "max_bytes": 5, "seed": 3, "steps": 4, "mode": "diffusion"})
        assert a["mode"] == "diffusion" and a["text"] == b["text"] and a["parity_ok"] and a["new_bytes"] == 5
        assert "causal" in error_text(await c.call_tool("generate", {"mode": "causal", "max_bytes": 2}))
        assert "one window" in error_text(await c.call_tool("generate", {"max_bytes": 100}))

        exported = await call(c, "export_int8", {"name": "denoise-q"})
        assert exported["name"] == "denoise-q" or "denoise-q" in str(exported)
