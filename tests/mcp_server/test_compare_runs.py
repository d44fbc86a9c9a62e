"""compare_runs: ten runs side by side in <= 2 KB, only the config fields that differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mcp.client import Client

from mcp_server.budget import result_bytes

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio


def _ten_runs(ws: Path) -> None:
    """Nine more runs made from the trained one, each with its own lr, depth and data file, as an agent's sweep
    would leave them (the events, plan and checkpoints are the real job's)."""
    src = ws / "jobs" / "job-0001"
    for i in range(2, 11):
        dst = ws / "jobs" / f"job-{i:04d}"
        shutil.copytree(src, dst)
        req = json.loads((dst / "request.json").read_text())
        req["config"]["train"]["lr"] = 1e-3 * i
        req["config"]["model"]["layers"] = 2 + i % 3
        req["config"]["data"]["paths"] = [str(ws / "data" / f"sweep-{i}" / "corpus.txt")]
        (dst / "request.json").write_text(json.dumps(req))
        rec = json.loads((dst / "job.json").read_text())
        rec.update(job_id=dst.name, created_at=rec["created_at"] + i, cpu_s=61.0 * i)
        (dst / "job.json").write_text(json.dumps(rec))


async def test_ten_runs_fit_in_two_kilobytes(trained_ws):
    _ten_runs(trained_ws)
    async with Client(new_server(trained_ws)) as c:
        result = await c.call_tool("compare_runs", {"last": 10})
        assert not result.is_error
        size = result_bytes(result)
        print(f"compare_runs, 10 runs: {size} bytes")
        assert size <= 2048, size
        table = result.structured_content
        cols, rows = table["columns"], table["rows"]
        assert cols[:7] == ["job", "status", "params", "updates", "cpu_min", "val_bpb", "best_bpb"]
        assert sorted(cols[7:]) == ["layers", "lr", "paths"], cols  # only what differs; d_model etc. are equal
        assert [r[0] for r in rows] == [f"job-{i:04d}" for i in range(1, 11)]
        row = dict(zip(cols, rows[4], strict=True))  # job-0005
        assert row["status"] == "completed" and row["updates"] == TRAIN_STEPS and row["params"] > 0
        assert row["lr"] == pytest.approx(0.005) and row["layers"] == 4 and row["cpu_min"] == pytest.approx(5.08)
        assert row["best_bpb"] <= row["val_bpb"]
        assert row["paths"].endswith("sweep-5/corpus.txt") and len(row["paths"]) <= 24

        picked = await call(c, "compare_runs", {"jobs": ["job-0007", "job-0002"]})
        assert [r[0] for r in picked["rows"]] == ["job-0007", "job-0002"]
        assert "unknown job ids ['job-0099']" in error_text(await c.call_tool("compare_runs", {"jobs": ["job-0099"]}))
        resource = await c.read_resource("bt://runs/compare")
        assert json.loads(resource.contents[0].text)["rows"][-1][0] == "job-0010"
