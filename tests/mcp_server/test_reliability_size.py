"""The model-size guard (issue 13, item 5): refuse, before allocating, what this machine cannot hold.

The 825 G-parameter config of the issue is refused at patch time against the real limit. The in-process
and worker cases use ``BT_MEMORY_LIMIT_MB`` to make a modest model "too large", so that the test stays
safe to run even without the guard (it would then build ~100 MiB, not terabytes).
"""

from __future__ import annotations

import json
import os

import pytest
from mcp.client import Client

import bit_transformer.checkpoint as ck
from bit_transformer.config import RunConfig
from bit_transformer.factory import build_model
from bit_transformer.memory_limits import ModelTooLarge, check_fits, memory_limit

from .conftest import TINY, call, error_text, new_server

HUGE = {"model": {"layers": 256, "d_model": 16384}}
# ~6.3 M parameters: 24 MiB of weights; its training estimate is a few hundred MiB.
MEDIUM = {"model": {"layers": 8, "d_model": 256, "nhead": 4, "max_seq_len": 72}}


def test_the_limit_is_this_machines_memory(monkeypatch):
    monkeypatch.delenv("BT_MEMORY_LIMIT_MB", raising=False)
    limit, what = memory_limit("cpu")
    assert 0 < limit <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert "RAM" in what or "cgroup" in what
    monkeypatch.setenv("BT_MEMORY_LIMIT_MB", "100")
    assert memory_limit("cpu") == (100 << 20, "BT_MEMORY_LIMIT_MB")


def test_the_issue_config_is_refused_with_estimate_limit_and_fix(monkeypatch):
    monkeypatch.delenv("BT_MEMORY_LIMIT_MB", raising=False)
    with pytest.raises(ModelTooLarge) as err:
        check_fits(RunConfig.model_validate(HUGE))
    msg = str(err.value)
    assert "model.layers=256, model.d_model=16384" in msg and "TiB for training" in msg
    assert "GiB" in msg and ("RAM" in msg or "cgroup" in msg)
    assert "fewer model.layers or a smaller model.d_model" in msg
    check_fits(RunConfig.model_validate(TINY))  # a small one passes


def test_loading_a_checkpoint_too_large_for_the_limit_is_refused_before_building(tmp_path, monkeypatch):
    cfg = RunConfig.model_validate(MEDIUM)
    path = ck.save_checkpoint(tmp_path / "checkpoints" / "big", model=build_model(cfg.model), config=cfg,
                              state={"update": 0})
    monkeypatch.setenv("BT_MEMORY_LIMIT_MB", "8")
    with pytest.raises(ModelTooLarge, match=r"for building .* but BT_MEMORY_LIMIT_MB is 8\.0 MiB"):
        ck.load_checkpoint(path)


@pytest.mark.anyio
async def test_patch_config_refuses_the_issue_config(tiny_ws, monkeypatch):
    monkeypatch.delenv("BT_MEMORY_LIMIT_MB", raising=False)
    async with Client(new_server(tiny_ws)) as c:
        msg = error_text(await c.call_tool("patch_config", {"patch": HUGE}))
        assert "nothing was changed" in msg and "model too large for this machine" in msg and "TiB" in msg
        assert (await call(c, "get_config", {"derived": False}))["config"]["model"]["layers"] == 2


@pytest.mark.anyio
async def test_no_in_process_build_and_no_job_beyond_the_limit(tiny_ws, monkeypatch):
    # The config was edited by hand (no patch_config check): the server must still not build it.
    cfg = json.loads((tiny_ws / "config.json").read_text())
    cfg["model"].update(MEDIUM["model"])
    (tiny_ws / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("BT_MEMORY_LIMIT_MB", "16")  # the worker inherits it too
    async with Client(new_server(tiny_ws)) as c:
        msg = error_text(await c.call_tool("inspect_attention", {}))
        assert "model too large for this machine" in msg and "16.0 MiB" in msg
        assert "model.layers=8, model.d_model=256" in msg
        started = await call(c, "train", {"steps": 5})
        job = await call(c, "get_job", {"job_id": started["job_id"], "wait_s": 120})
    assert job["status"] == "failed" and "model too large for this machine" in job["reason"], job["reason"]
    assert "for training" in job["reason"] and job.get("progress", {}).get("update", 0) == 0


@pytest.mark.gpu
def test_on_cuda_the_limit_is_the_gpus_memory(monkeypatch):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.delenv("BT_MEMORY_LIMIT_MB", raising=False)
    limit, what = memory_limit("cuda")
    assert limit == torch.cuda.get_device_properties(0).total_memory and "GPU 0" in what
    cfg = RunConfig.model_validate({**HUGE, "train": {"device": "cuda"}})
    with pytest.raises(ModelTooLarge, match="the memory of GPU 0"):
        check_fits(cfg)
    small = RunConfig.model_validate({"train": {"device": "cuda"}})
    assert check_fits(small, purpose="building").weights < limit  # builds: host RAM; training: the GPU
    check_fits(small)
