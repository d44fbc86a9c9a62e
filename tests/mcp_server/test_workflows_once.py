"""Scale-up and INT8 export exist once (the engine): the CLI and the MCP tool give the same result on one checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from mcp.client import Client
from safetensors.torch import load_file

from bit_transformer.cli import main as cli

from .conftest import call, new_server

pytestmark = pytest.mark.anyio


def _source(ws):
    """The checkpoint the tools use by default (the current one) and its path."""
    return new_server(ws).app_state.engine.resolve(None)


async def test_scale_up_cli_and_tool_write_the_same_checkpoint(trained_ws, tmp_path, capsys):
    name, path = _source(trained_ws)
    assert cli(["scale-up", "--checkpoint", str(path), "--layers", "3", "--d_model", "64", "--nhead", "8",
                "--out", str(tmp_path / "grown"), "--json"]) == 0
    by_cli = json.loads(capsys.readouterr().out)
    async with Client(new_server(trained_ws)) as c:
        by_tool = await call(c, "scale_up", {"layers": 3, "d_model": 64, "nhead": 8})
    tool_path = trained_ws / "runs" / by_tool["checkpoint"].replace("/", "/checkpoints/", 1)
    metas = [json.loads((p / "meta.json").read_text()) for p in (tmp_path / "grown", tool_path)]
    assert [m["kind"] for m in metas] == ["scaled", "scaled"]
    assert [sorted(m["state"]) for m in metas] == [["scale", "scaled_from", "update"]] * 2
    assert metas[0]["state"]["scale"] == metas[1]["state"]["scale"]  # same probe, same growth, same numbers
    assert not (tmp_path / "latest").exists() and not (tool_path.parent / "latest").exists()  # no pointer moved
    assert metas[1]["state"]["scaled_from"] == name and metas[0]["state"]["scaled_from"] == str(path)
    report = by_cli["report"]
    assert by_tool["params_after"] == report["params_after"] and by_tool["exact"] == report["exact"]
    assert by_tool["max_logit_change"] == report["max_logit_change"] < 1e-4
    a, b = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "grown", tool_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same seed: the same weights


async def test_export_int8_cli_and_tool_measure_the_same_quality(trained_ws, tmp_path, capsys):
    _, path = _source(trained_ws)
    out = tmp_path / "int8"
    assert cli(["export-int8", "--checkpoint", str(path), "--out", str(out), "--eval-bytes", "300",
                "--cache_dir", str(tmp_path / "cache"), "--json"]) == 0
    by_cli = json.loads(capsys.readouterr().out)
    async with Client(new_server(trained_ws)) as c:
        by_tool = await call(c, "export_int8", {"eval_bytes": 300})
    assert by_cli["eval_bytes"] == by_tool["eval_bytes"] == 300
    for key in ("bpb_fp32", "bpb_int8", "bpb_delta"):
        assert by_cli[key] == pytest.approx(by_tool[key], abs=1e-6), key
    assert by_cli["bpb_delta"] == pytest.approx(by_cli["bpb_int8"] - by_cli["bpb_fp32"])
    assert by_tool["fp32_size_bytes"] == by_cli["fp32_bytes"]
    assert {k: v for k, v in by_cli.items() if k in by_tool["info"]} == by_tool["info"]
    assert cli(["export-int8", "--checkpoint", str(path), "--out", str(tmp_path / "q2"), "--eval_bytes", "0",
                "--json"]) == 0
    skipped = json.loads(capsys.readouterr().out)
    assert skipped["bpb_delta"] is None and skipped["eval_bytes"] is None
