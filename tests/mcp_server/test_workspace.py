"""Workspace confinement, atomic writes and config persistence (no server, no torch)."""

from __future__ import annotations

import json
import os

import pytest

from bit_transformer.config import DataConfig, RunConfig
from mcp_server.events import EventReader, EventWriter, downsample
from mcp_server.workspace import Workspace, WorkspaceError, atomic_write_json


def test_layout_and_config_defaults(tmp_path):
    ws = Workspace(tmp_path / "w")
    for d in ("jobs", "runs", "exports", "cache"):
        assert (ws.root / d).is_dir()
    cfg = ws.load_config()
    assert cfg == RunConfig()
    assert json.loads(ws.config_path.read_text())["model"]["d_model"] == 128


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "..", "a/b", "", ".hidden", "x" * 81])
def test_names_outside_or_malformed_are_refused(tmp_path, bad):
    ws = Workspace(tmp_path / "w")
    with pytest.raises(WorkspaceError):
        ws.export_path(bad)
    with pytest.raises(WorkspaceError):
        ws.job_dir(bad)


def test_checkpoint_names_need_run_and_stay_inside(tmp_path):
    ws = Workspace(tmp_path / "w")
    assert ws.checkpoint_path("job-0001/update-0000010") == ws.root / "runs/job-0001/checkpoints/update-0000010"
    for bad in ("update-1", "../job/x", "job-0001/../../etc", "/abs/x", "job/x/y"):
        with pytest.raises(WorkspaceError):
            ws.checkpoint_path(bad)


def test_resolve_refuses_symlink_escape(tmp_path):
    ws = Workspace(tmp_path / "w")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ws.exports_dir / "link")
    with pytest.raises(WorkspaceError, match="leaves the workspace"):
        ws.export_path("link")


def test_data_paths_are_confined(tmp_path):
    ws = Workspace(tmp_path / "w")
    (ws.root / "data").mkdir()
    (ws.root / "data" / "a.txt").write_text("hello")
    cfg = ws.confine_data(DataConfig(source="files", paths=["data/*.txt"]), check_files=True)
    assert cfg.paths == [str(ws.root / "data" / "*.txt")]
    for bad in (["/etc/passwd"], ["../x.txt"], ["data/../../x"]):
        with pytest.raises(WorkspaceError, match=r"data\.paths\[0\]"):
            ws.confine_data(DataConfig(source="files", paths=bad))
    os.symlink("/etc/hostname", ws.root / "data" / "evil.txt")
    with pytest.raises(WorkspaceError, match="link that leaves"):
        ws.confine_data(DataConfig(source="files", paths=["data/*.txt"]), check_files=True)
    with pytest.raises(WorkspaceError, match="hf_data_files"):
        ws.confine_data(DataConfig(source="hf", hf_name="text", hf_data_files={"train": "/tmp/x.txt"}))


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "d" / "x.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_corrupt_config_is_set_aside(tmp_path):
    ws = Workspace(tmp_path / "w")
    ws.config_path.write_text("{not json")
    assert ws.load_config() == RunConfig()
    assert any(p.name.startswith("config.json.bad-") for p in ws.root.iterdir())


def test_state_roundtrip(tmp_path):
    ws = Workspace(tmp_path / "w")
    assert ws.load_state().current_checkpoint is None
    ws.update_state(current_checkpoint="job-0001/best")
    assert Workspace(ws.root).load_state().current_checkpoint == "job-0001/best"


def test_event_reader_handles_partial_lines_and_nan(tmp_path):
    path = tmp_path / "m.jsonl"
    w = EventWriter(path)
    w.emit("step", {"update": 1, "loss": float("nan")})
    reader = EventReader(path)
    assert reader.read_new()[0]["data"] == {"update": 1, "loss": "nan"}
    with open(path, "a") as f:
        f.write('{"event": "step", "data": {"upd')
    assert reader.read_new() == []
    with open(path, "a") as f:
        f.write('ate": 2}}\n')
    assert reader.read_new()[0]["data"] == {"update": 2}
    w.close()


def test_downsample_keeps_ends():
    pts = [{"update": i} for i in range(1000)]
    out = downsample(pts, 10)
    assert len(out) == 10 and out[0]["update"] == 0 and out[-1]["update"] == 999
    assert downsample(pts[:5], 10) == pts[:5]
