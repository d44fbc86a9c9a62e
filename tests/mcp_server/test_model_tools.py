"""evaluate / generate / checkpoints / export_int8 / scale_up on the session's trained workspace."""

from __future__ import annotations

import math

import pytest
from mcp.client import Client

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio
FINAL = f"job-0001/update-{TRAIN_STEPS:07d}"


async def test_evaluate_val_and_text(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        val = await call(c, "evaluate", {"max_bytes": 300})
        assert val["source"] == "val" and val["checkpoint"] == FINAL and val["n_bytes"] == 300
        assert 0 < val["bits_per_byte"] < 20 and 0 <= val["bit_accuracy"] <= 1
        assert math.isclose(val["bits_per_byte"], val["data_bits_per_byte"] + val["parity_bits_per_byte"],
                            rel_tol=1e-3)
        assert set(val["compressors"]) == {"gzip", "bzip2", "xz"}
        # Which figure compares with the compressors, and that they had the training text as context.
        ctx = val["compressor_context_bytes"]
        assert ctx > 0 and val["compare"].startswith("bits_per_byte is the figure to compare with compressors")
        assert f"given {ctx} bytes of the training text as context" in val["compare"]
        assert "loss_by_phase" not in val and "by_phase" not in val  # unlabelled arrays: on request, labelled
        rich = await call(c, "evaluate", {"max_bytes": 300, "detail": True})
        assert len(rich["by_phase"]["loss_nats"]) == len(rich["by_phase"]["accuracy"]) == 9
        assert "8: parity" in rich["by_phase"]["phases"] and rich["bits_per_byte"] == val["bits_per_byte"]
        text = await call(c, "evaluate", {"text": "hello world, hello bits", "compressors": False})
        assert text["source"] == "text" and text["n_bytes"] == len("hello world, hello bits")
        train = await call(c, "evaluate", {"split": "train", "max_bytes": 200, "compressors": False})
        assert train["source"] == "train"
        msg = error_text(await c.call_tool("evaluate", {"checkpoint": "nope"}))
        assert "nope" in msg and "list_checkpoints" in msg
        assert "text is empty" in error_text(await c.call_tool("evaluate", {"text": ""}))
        assert "split" in error_text(await c.call_tool("evaluate", {"split": "test"}))
        msg = error_text(await c.call_tool("evaluate", {"checkpoint": "../../etc/passwd"}))
        assert "Traceback" not in msg


async def test_generate_is_reproducible_and_parity_safe(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        a = await call(c, "generate", {"prompt": "def ", "max_bytes": 12, "seed": 7})
        b = await call(c, "generate", {"prompt": "def ", "max_bytes": 12, "seed": 7})
        assert a["text"] == b["text"] and a["new_bytes"] == 12 and a["parity_ok"] is True
        assert a["checkpoint"] == FINAL
        assert "triggered" in a["verdict"] and "telemetry" not in a and "full_text" not in a  # on request only
        rich = await call(c, "generate", {"prompt": "def ", "max_bytes": 12, "seed": 7, "telemetry": True})
        assert rich["text"] == a["text"] and "S" in rich["telemetry"]
        t = await call(c, "telemetry")
        assert t["last_generation"]["checkpoint"] == FINAL
        assert "top_p" in error_text(await c.call_tool("generate", {"prompt": "x", "top_p": 0}))
        assert "max_bytes" in error_text(await c.call_tool("generate", {"max_bytes": 10**9}))


async def test_no_model_yet_is_a_clear_error(tiny_ws):
    async with Client(new_server(tiny_ws)) as c:
        for tool, args in (("evaluate", {}), ("generate", {"prompt": "a"}), ("scale_up", {"layers": 4})):
            assert "no model yet" in error_text(await c.call_tool(tool, args)), tool
        assert (await call(c, "list_checkpoints"))["checkpoints"] == []
        t = await call(c, "telemetry")
        assert t.get("telemetry") is None and "no telemetry yet" in t["note"]


async def test_checkpoints_list_and_load(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        cks = await call(c, "list_checkpoints")
        names = [ck["name"] for ck in cks["checkpoints"]]
        assert FINAL in names and "job-0001/best" in names and cks["current"] == FINAL
        assert all("path" not in ck for ck in cks["checkpoints"])
        final = next(ck for ck in cks["checkpoints"] if ck["name"] == FINAL)
        assert final["update"] == TRAIN_STEPS and final["kind"] == "final" and final["current"]
        loaded = await call(c, "load_checkpoint", {"name": "job-0001/update-0000003"})
        assert loaded["name"] == "job-0001/update-0000003" and loaded["state"]["update"] == 3
        assert loaded["changed"] == [] and loaded["model"]["d_model"] == 32
        after = await call(c, "list_checkpoints")
        assert after["current"] == after["init_next"] == "job-0001/update-0000003"
        assert (await call(c, "evaluate", {"max_bytes": 100, "compressors": False}))["checkpoint"] == \
            "job-0001/update-0000003"
        assert (await call(c, "load_checkpoint", {"name": "latest"}))["name"] == FINAL
        for bad in ("../../etc", "/etc/passwd", "job-0001/../../x", "nope"):
            msg = error_text(await c.call_tool("load_checkpoint", {"name": bad}))
            assert "Traceback" not in msg and ("not allowed" in msg or "unknown" in msg or "does not" in msg
                                               or "leaves" in msg), msg


async def test_load_checkpoint_sets_model_config_and_next_run(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        await call(c, "patch_config", {"patch": {"model": {"d_model": 64}}})
        loaded = await call(c, "load_checkpoint", {"name": FINAL})
        assert {"path": "model.d_model", "old": 64, "new": 32} in loaded["changed"]
        # The next run would start from it; a changed architecture must be noticed, not silently dropped.
        await call(c, "patch_config", {"patch": {"model": {"layers": 3}}})
        msg = error_text(await c.call_tool("train", {"steps": 1}))
        assert "fresh=true" in msg and FINAL in msg


async def test_export_int8(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        out = await call(c, "export_int8", {"eval_bytes": 200})
        assert out["name"] == "job-0001-update-0000006-int8" and out["path"].startswith("exports/")
        assert out["size_bytes"] > 0 and (trained_ws / out["path"]).exists()
        assert out["bpb_fp32"] > 0 and abs(out["bpb_delta"]) < 1.0
        assert out["size_ratio"] > 1.0 and out["fp32_size_bytes"] > out["size_bytes"]
        assert out["info"]["quantized_linears"] > 0 and "path" not in out["info"]
        named = await call(c, "export_int8", {"name": "mine", "eval_bytes": 0})
        assert named["path"] == "exports/mine" and named.get("bpb_delta") is None
        assert "not allowed" in error_text(await c.call_tool("export_int8", {"name": "../x"}))
        four = await call(c, "export_int8", {"bits": 4, "eval_bytes": 200})  # the same tool, INT4 (default groups)
        assert four["name"] == "job-0001-update-0000006-int4" and four["info"]["bits"] == 4
        assert four["info"]["group_size"] == 32 and four["size_bytes"] < out["size_bytes"]
        assert abs(four["bpb_delta"]) < 1.0 and (trained_ws / four["path"] / "model.int4.safetensors").is_file()


async def test_scale_up_rebuilds_plan_and_next_run(trained_ws):
    async with Client(new_server(trained_ws)) as c:
        out = await call(c, "scale_up", {"layers": 4})
        assert out["old_model"]["layers"] == 2 and out["new_model"]["layers"] == 4
        assert out["params_after"] > out["params_before"]
        assert out["plan"]["params"] == out["params_after"]
        assert out["plan"]["scheduler_horizon"] == out["plan"]["total_updates"]
        assert out["exact"] and "max_logit_change" in out
        cfg = await call(c, "get_config", {"derived": False})
        assert cfg["config"]["model"]["layers"] == 4
        cks = await call(c, "list_checkpoints")
        assert cks["current"] == cks["init_next"] == out["checkpoint"]
        assert "nothing to grow" in error_text(await c.call_tool("scale_up", {}))
    # The next train() starts from the grown model (checked without a real worker: it just exits).
    server = new_server(trained_ws)
    fake = trained_ws.parent / "fake.sh"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    server.app_state.jobs.python = str(fake)
    async with Client(server) as c:
        job = await call(c, "train", {"steps": 2, "wait_s": 20})
        job = await call(c, "get_job", {"job_id": job["job_id"], "include": ["request"]})
        assert job["request"]["init_name"] == out["checkpoint"]
        assert job["status"] == "failed" and "before reporting a result" in job["reason"]
        assert (await call(c, "list_checkpoints")).get("init_next") is None  # consumed by that run
