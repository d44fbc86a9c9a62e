"""Distillation through the server: patch_config(train.teacher='<run>/<name>'), a train job, get_job's plan."""

from __future__ import annotations

import json
import time

import pytest
from mcp.client import Client

from .conftest import call, error_text, new_server

pytestmark = pytest.mark.anyio


async def test_a_train_job_distils_from_a_workspace_checkpoint(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        bad = error_text(await c.call_tool("patch_config", {"patch": {"train": {"teacher": "nope/update-1"}}}))
        assert "train.teacher" in bad and "nothing was changed" in bad
        outside = error_text(await c.call_tool("patch_config", {"patch": {"teacher": "/etc"}}))
        assert "train.teacher" in outside
        teacher = (await call(c, "list_checkpoints"))["checkpoints"][-1]["name"]
        await call(c, "patch_config", {"patch": {"teacher": teacher, "distill_weight": 0.8, "layers": 1}})
        config = (await call(c, "get_config", {"derived": False}))["config"]["train"]
        assert config["teacher"] == teacher and config["distill_weight"] == 0.8
        started = await call(c, "train", {"steps": 3, "fresh": True})
        view, t0 = started, time.monotonic()
        while view["active"] and time.monotonic() - t0 < 240:
            view = await call(c, "get_job", {"job_id": started["job_id"], "wait_s": 30})
        final = await call(c, "get_job", {"job_id": started["job_id"], "include": ["plan", "last_step"]})
    assert final["status"] == "completed", final
    assert final["plan"]["teacher"].startswith(teacher + " sha256:") and "alpha=0.8" in final["plan"]["teacher"]
    assert final["last_step"]["distill_kl"] > 0
    ckpt = trained_ws / "runs" / final["checkpoint"].replace("/", "/checkpoints/", 1)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["state"]["teacher"]["label"] == teacher  # the student records its teacher; resume keeps it
