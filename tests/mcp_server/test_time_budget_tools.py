"""train(minutes=) and get_config's measured speed (s_per_update, eta_s, budget note, cached per shape)."""

from __future__ import annotations

import json
import time

import pytest
from mcp.client import Client

from .conftest import call, error_text, new_server

pytestmark = pytest.mark.anyio


async def test_get_config_measures_once_per_shape_and_reports_the_eta(tiny_ws):
    speed_file = tiny_ws / "cache" / "speed.json"
    async with Client(new_server(tiny_ws)) as c:
        derived = (await call(c, "get_config"))["derived"]
        s, total = derived["s_per_update"], derived["plan"]["total_updates"]
        assert s > 0 and derived["eta_s"] == pytest.approx(total * s, rel=1e-3, abs=0.1)
        assert any("s/update here" in n and "train(minutes=M)" in n for n in derived["notes"])
        assert len(json.loads(speed_file.read_text())) == 1
        await call(c, "patch_config", {"patch": {"lr": 1e-3, "time_budget": "10m"}})  # same shape: no new probe
        derived = (await call(c, "get_config"))["derived"]
        assert derived["s_per_update"] == s and derived["eta_s"] == 600.0
        assert any("time_budget 10 min is ~" in n for n in derived["notes"])
        assert len(json.loads(speed_file.read_text())) == 1
        await call(c, "patch_config", {"patch": {"batch_size": 4}})
        await call(c, "get_config")
        assert len(json.loads(speed_file.read_text())) == 2
    async with Client(new_server(tiny_ws)) as c:  # a new server reads the workspace's cache
        assert (await call(c, "get_config"))["derived"]["s_per_update"] is not None
        assert len(json.loads(speed_file.read_text())) == 2


async def test_train_minutes_sets_the_time_budget(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        assert "one of steps, epochs or minutes" in error_text(await c.call_tool("train", {"steps": 2, "minutes": 1}))
        started = await call(c, "train", {"minutes": 0.05})  # 3 s of training
        view, t0 = started, time.monotonic()
        while view["active"] and time.monotonic() - t0 < 240:
            view = await call(c, "get_job", {"job_id": started["job_id"], "wait_s": 30})
        final = await call(c, "get_job", {"job_id": started["job_id"], "include": ["plan"]})
        assert final["status"] == "completed", final
        plan = final["plan"]
        assert plan["time_budget_s"] == 3.0 and plan["probe_s_per_update"] > 0
        assert final["progress"]["update"] == plan["total_updates"]
