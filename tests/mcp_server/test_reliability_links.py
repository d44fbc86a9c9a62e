"""Symlinks planted in the workspace: nothing outside it is read, listed or written (issue 13, item 4).

Real symlinks to real folders outside the workspace; the server's own walks (job recovery, checkpoint
listing, the bit cache) must skip them, and the outside files must stay byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mcp.client import Client

from bit_transformer.checkpoint import save_checkpoint
from bit_transformer.config import RunConfig
from bit_transformer.factory import build_model
from mcp_server.engine import Engine
from mcp_server.jobs import JobManager
from mcp_server.workspace import Workspace, WorkspaceError

from .conftest import call, error_text, new_server

RUNNING = {"job_id": "job-9999", "kind": "train", "status": "running", "reason": None, "created_at": 1.0,
           "started_at": 1.0, "finished_at": None, "pid": None, "request": {"run": "job-9999"}, "config": {},
           "plan": None, "last_step": {"update": 7}, "checkpoint": None, "result": None}


def _outside_job(tmp_path: Path, job_id: str = "job-9999") -> Path:
    d = tmp_path / "outside" / job_id
    d.mkdir(parents=True)
    (d / "job.json").write_text(json.dumps({**RUNNING, "job_id": job_id}))
    (d / "metrics.jsonl").write_text('{"event": "step", "t": 1, "data": {"update": 7, "loss": 0.5}}\n')
    return d


def test_a_symlinked_job_folder_is_neither_loaded_nor_rewritten(tmp_path, caplog):
    ws = Workspace(tmp_path / "ws")
    outside = _outside_job(tmp_path)
    before = (outside / "job.json").read_bytes()
    os.symlink(outside, ws.jobs_dir / "job-9999")
    # A real job folder whose job.json is a link out: also skipped (reading it would read outside).
    real = ws.jobs_dir / "job-0002"
    real.mkdir()
    other = _outside_job(tmp_path, "job-0002")
    os.symlink(other / "job.json", real / "job.json")
    manager = JobManager(ws)
    assert manager.get("job-9999") is None and manager.get("job-0002") is None and manager.all() == []
    assert (outside / "job.json").read_bytes() == before  # still "running": the server did not touch it
    assert json.loads((other / "job.json").read_text())["status"] == "running"
    assert "job-9999" in caplog.text and "symlink" in caplog.text


@pytest.mark.anyio
async def test_tools_do_not_serve_a_symlinked_job(tmp_path):
    ws = tmp_path / "ws"
    Workspace(ws)
    outside = _outside_job(tmp_path)
    os.symlink(outside, ws / "jobs" / "job-9999")
    async with Client(new_server(ws)) as c:
        assert (await call(c, "list_jobs"))["jobs"] == []
        assert "job-9999" in error_text(await c.call_tool("get_job", {"job_id": "job-9999"}))
        assert (await c.call_tool("telemetry", {"job_id": "job-9999"})).is_error
        assert (await c.read_resource("bt://jobs")).contents[0].text.strip() == "[]"
    assert json.loads((outside / "job.json").read_text())["status"] == "running"


def _checkpoint(root: Path, name: str) -> Path:
    cfg = RunConfig.model_validate({"model": {"layers": 1, "d_model": 16, "nhead": 2, "max_seq_len": 18}})
    return save_checkpoint(root / name, model=build_model(cfg.model), config=cfg, state={"update": 1})


def test_checkpoints_reached_through_symlinks_are_not_listed(tmp_path, caplog):
    ws = Workspace(tmp_path / "ws")
    out = tmp_path / "outside"
    _checkpoint(ws.runs_dir / "good" / "checkpoints", "update-0000001")
    _checkpoint(out / "run-a" / "checkpoints", "update-0000001")
    os.symlink(out / "run-a", ws.runs_dir / "linked-run")  # a symlinked run folder
    (ws.runs_dir / "linked-ck-root").mkdir()
    os.symlink(out / "run-a" / "checkpoints", ws.runs_dir / "linked-ck-root" / "checkpoints")  # its checkpoints/
    (ws.runs_dir / "linked-ck" / "checkpoints").mkdir(parents=True)
    os.symlink(out / "run-a" / "checkpoints" / "update-0000001",  # one checkpoint folder
               ws.runs_dir / "linked-ck" / "checkpoints" / "update-0000001")
    names = [name for name, _ in Engine(ws).checkpoints()]
    assert names == ["good/update-0000001"]
    assert "linked-run" in caplog.text and "linked-ck-root" in caplog.text and "update-0000001" in caplog.text


@pytest.mark.anyio
async def test_export_listing_neither_lists_nor_measures_through_links(tmp_path):
    ws = Workspace(tmp_path / "ws")
    out = tmp_path / "outside"
    (out / "big").mkdir(parents=True)
    (out / "big" / "blob.bin").write_bytes(b"x" * 100_000)
    real = ws.exports_dir / "int8-a"
    real.mkdir()
    (real / "model.bin").write_bytes(b"w" * 10)
    os.symlink(out / "big" / "blob.bin", real / "linked.bin")  # a link to a file outside
    os.symlink(out / "big", real / "linked-dir")  # a link to a folder outside
    os.symlink(out / "big", ws.exports_dir / "int8-linked")  # a symlinked export
    async with Client(new_server(ws.root)) as c:
        listed = await call(c, "list_exports")
    assert [(e["name"], e["size_bytes"]) for e in listed["exports"]] == [("int8-a", 10)]


def test_cache_links_are_removed_not_followed(tmp_path):
    ws = Workspace(tmp_path / "ws")
    target = tmp_path / "outside.bin"
    target.write_bytes(b"precious")
    os.symlink(target, ws.cache_dir / "builtin-0123.bits.npy")
    ws.drop_links(ws.cache_dir, what="cache")
    assert list(ws.cache_dir.iterdir()) == [] and target.read_bytes() == b"precious"


@pytest.mark.parametrize("folder", ["jobs", "runs", "exports", "cache"])
def test_a_symlinked_workspace_folder_is_refused_at_start(tmp_path, folder):
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / folder)
    with pytest.raises(WorkspaceError, match=f"workspace folder '{folder}' is a symlink"):
        Workspace(root)
