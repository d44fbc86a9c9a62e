"""A real training job in a worker process: plan, progress, one-job-at-a-time, history, resources."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from mcp.client import Client

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio


async def test_train_returns_job_and_plan_at_once(trained):
    started = trained["started"]
    assert started["job_id"] == "job-0001"
    assert started["status"] in ("starting", "running")
    assert started["active"] is True
    assert "get_job" in started["next"]


async def test_second_train_names_the_running_job(trained):
    msg = error_text(trained["busy"])
    assert "job-0001" in msg and "one training job at a time" in msg


async def test_job_completes_with_plan_matching_loader(trained):
    job = trained["final"]
    assert job["status"] == "completed", job.get("reason")
    plan = job["plan"]
    assert plan["total_updates"] == plan["scheduler_horizon"] == TRAIN_STEPS
    assert plan["steps_per_epoch"] == job["loader_len"] == math.ceil(plan["n_train_windows"] / plan["batch_size"])
    assert plan["updates_per_epoch"] == math.ceil(plan["steps_per_epoch"] / plan["accum_steps"])
    assert plan["precision"] == "fp32" and job["last_step"]["precision"] == "fp32"  # amp='none' in TINY
    assert plan["compile_ran"] is False and plan["compile_reason"]
    assert job["progress"]["update"] == TRAIN_STEPS and job["progress"]["fraction"] == 1.0
    polled = trained["polled"]  # the compact poll: no detail sections, but the numbers an agent decides on
    assert set(polled) <= {"job_id", "status", "active", "reason", "progress", "step", "eval", "gate", "checkpoint",
                           "run", "elapsed_s", "next"}
    assert polled["step"]["update"] == TRAIN_STEPS
    assert polled["step"]["bpb"] == pytest.approx(job["last_step"]["raw_loss"] * 9 / math.log(2), rel=1e-3)
    assert polled["eval"]["val_bpb"] == pytest.approx(job["evals"][-1]["val_bpb"], rel=1e-3)
    assert polled["gate"]["state"] == ("burn-in" if job["evals"][-1]["gate"]["in_burn_in"] else "ok")
    assert polled["checkpoint"] == job["checkpoint"]
    assert [h["update"] for h in job["history"]] == list(range(1, TRAIN_STEPS + 1))
    assert all(math.isfinite(h["loss"]) for h in job["history"])
    # Validations every 3 updates with the gate in burn-in first (burn_in=2: observations 1, 2).
    assert [e["update"] for e in job["evals"]] == [3, 6]
    assert job["evals"][0]["gate"]["in_burn_in"] is True and job["evals"][0]["gate"]["triggered"] is False
    assert job["checkpoint"] == f"job-0001/update-{TRAIN_STEPS:07d}"
    assert job["data"]["n_bytes"] == 8000
    assert job["runtime"]["attention"][0] == {"backend": "sdpa", "is_causal": True, "dense_mask": False,
                                              "chunked": False}


async def test_progress_notifications_strictly_increase(trained):
    values = [p for p, _, _ in trained["progress"]]
    assert values, "no progress notifications were sent"
    assert all(b > a for a, b in itertools.pairwise(values))
    assert values[-1] == TRAIN_STEPS
    assert trained["progress"][-1][1] == TRAIN_STEPS
    assert "job-0001" in trained["progress"][-1][2]


async def test_get_list_and_history_after_restart(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        listed = await call(c, "list_jobs")
        assert listed.get("active_job") is None
        assert [j["job_id"] for j in listed["jobs"]] == ["job-0001"]
        assert listed["jobs"][0]["status"] == "completed"
        assert listed["total"] == 1
        job = await call(c, "get_job", {"job_id": "job-0001", "history": 2})
        assert len(job["history"]) == 2 and job["history"][-1]["update"] == TRAIN_STEPS
        assert (await call(c, "get_job"))["job_id"] == "job-0001"  # default: newest
        msg = error_text(await c.call_tool("get_job", {"job_id": "job-9999"}))
        assert "unknown job_id 'job-9999'" in msg and "job-0001" in msg
        msg = error_text(await c.call_tool("cancel_job", {"job_id": "job-0001"}))
        assert "already ended (completed)" in msg
        error_text(await c.call_tool("get_job", {"wait_s": -1}))


async def test_resources_metrics_and_loss_curve(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        assert {"bt://jobs/{job_id}/metrics", "bt://jobs/{job_id}/loss.png"} <= templates
        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert {"bt://config", "bt://checkpoints", "bt://jobs"} <= uris
        metrics = (await c.read_resource("bt://jobs/job-0001/metrics")).contents[0].text
        events = [json.loads(line) for line in metrics.splitlines()]
        assert [e["event"] for e in events].count("step") == TRAIN_STEPS
        png = (await c.read_resource("bt://jobs/job-0001/loss.png")).contents[0]
        assert png.mime_type == "image/png"
        import base64

        assert base64.b64decode(png.blob)[:8] == b"\x89PNG\r\n\x1a\n"
        cfg = json.loads((await c.read_resource("bt://config")).contents[0].text)
        assert cfg["model"]["d_model"] == 32
        cks = json.loads((await c.read_resource("bt://checkpoints")).contents[0].text)
        assert f"job-0001/update-{TRAIN_STEPS:07d}" in [ck["name"] for ck in cks]
        assert all("path" not in ck for ck in cks)
        with pytest.raises(Exception, match="unknown job"):
            await c.read_resource("bt://jobs/job-0042/metrics")


async def test_telemetry_reports_kcs_and_gate(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        t = await call(c, "telemetry")
        now = await call(c, "telemetry", {"compute": True})
    assert now["telemetry_source"].startswith("computed now with job-0001/")
    assert 0.0 <= now["telemetry"]["C_pred"] <= 2.0
    assert t["job_id"] == "job-0001" and t["update"] == TRAIN_STEPS
    assert 0.0 <= t["telemetry"]["S"] <= 1.0 and 0.0 <= t["telemetry"]["K_input"] <= 1.0
    assert len(t["telemetry"]["attention_entropy"]) == 2
    assert t["gate"]["observations"] == 2 and t["gate"]["triggered"] is False
    assert "loss" in t["gate"]["ema"]


async def test_job_with_dataloader_workers_completes(tiny_ws):
    # Regression: the worker's stdin watcher once held the buffered reader's lock, so a forked
    # DataLoader worker hung forever at start-up (sys.stdin.close() in the child).
    async with Client(new_server(tiny_ws)) as c:
        await call(c, "patch_config", {"patch": {"train": {"num_workers": 1}}})
        started = await call(c, "train", {"steps": 2})
        job = await call(c, "get_job", {"job_id": started["job_id"], "wait_s": 90})
        assert job["status"] == "completed", job.get("reason")
        assert job["progress"]["update"] == 2


def _group_members(pgid: int) -> list[int]:
    from pathlib import Path

    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            members.append(int(stat.parent.name))
    return members


async def test_force_cancel_kills_dataloader_workers_too(tiny_ws):
    import anyio

    async with Client(new_server(tiny_ws)) as c:
        await call(c, "patch_config", {"patch": {"train": {"num_workers": 1}}})
        started = await call(c, "train", {"steps": 5000})
        job_id = started["job_id"]
        for _ in range(300):
            job = await call(c, "get_job", {"job_id": job_id, "wait_s": 1})
            if job["progress"]["update"] >= 1:
                break
        pid = json.loads((tiny_ws / "jobs" / job_id / "job.json").read_text())["pid"]
        assert len(_group_members(pid)) >= 2, "expected the worker and its DataLoader worker"
        await call(c, "cancel_job", {"job_id": job_id, "force": True})
        # Orphaned DataLoader workers only notice a dead parent on their 5 s watchdog tick: a group kill
        # must clear them well before that.
        for _ in range(20):
            if not _group_members(pid):
                break
            await anyio.sleep(0.1)
        assert _group_members(pid) == [], "force-cancel left processes of the job behind"
