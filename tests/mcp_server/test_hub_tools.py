"""push_to_hub / pull_from_hub on the session's trained workspace, against a local stand-in for the Hub."""

from __future__ import annotations

import logging
import re

import pytest
from mcp.client import Client

from tests.hub_fake import FakeHub

from .conftest import TRAIN_STEPS, call, error_text, new_server

pytestmark = pytest.mark.anyio
TOKEN = "hf_ServerEnvToken0123456789"


@pytest.fixture(autouse=True)
def hf_env(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


async def test_push_then_pull_gives_a_checkpoint_of_the_workspace(trained_ws, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with FakeHub(TOKEN) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        async with Client(new_server(trained_ws)) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            push = tools["push_to_hub"].annotations
            # The wire drops hints at their MCP default (openWorldHint true, readOnlyHint false).
            assert push.destructive_hint and push.open_world_hint is not False and not push.read_only_hint
            assert "token" not in (tools["push_to_hub"].input_schema or {}).get("properties", {})

            pushed = await call(c, "push_to_hub", {"repo_id": "me/tiny", "eval_bytes": 300})
            assert pushed["url"].endswith("/me/tiny") and 0 < pushed["bpb"] < 20
            assert set(pushed["compressors"]) == {"gzip", "bzip2", "xz"}
            card = fake.repos["me/tiny"]["README.md"].decode()
            row = re.search(r"\| this model \(next-bit code length\) \| ([0-9.]+) \|", card)
            assert row and float(row[1]) == pytest.approx(pushed["bpb"], abs=1e-4)
            # The tool calls that made the model: the config's changes, then train.
            assert "patch_config(patch=" in card and '"model.d_model": 32' in card
            assert f"train(steps={TRAIN_STEPS})" in card and "MCP job `job-0001`" in card
            assert "](loss_curve.png)" in card and fake.repos["me/tiny"]["loss_curve.png"][:4] == b"\x89PNG"

            pulled = await call(c, "pull_from_hub", {"repo_id": "me/tiny"})
            assert pulled["name"] == "hub/me--tiny" and pulled["params"] > 0
            names = [ck["name"] for ck in (await call(c, "list_checkpoints", {}))["checkpoints"]]
            assert "hub/me--tiny" in names
            loaded = await call(c, "load_checkpoint", {"name": "hub/me--tiny"})
            assert loaded["params"] == pulled["params"]
            ev = await call(c, "evaluate", {"checkpoint": "hub/me--tiny", "max_bytes": 300, "compressors": False})
            assert ev["bits_per_byte"] == pytest.approx(pushed["bpb"], abs=1e-4)  # the same model, the same bytes
            again = await call(c, "pull_from_hub", {"repo_id": "me/tiny"})  # replaces the earlier pull
            assert again == pulled
            results = [pushed, pulled, loaded, ev]
    assert TOKEN not in repr(results) + caplog.text


async def test_errors_name_the_fix_and_never_the_token(trained_ws, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    async with Client(new_server(trained_ws)) as c:
        missing = error_text(await c.call_tool("push_to_hub", {"repo_id": "me/tiny"}))
        assert "no Hugging Face token" in missing and "HF_TOKEN" in missing
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        with FakeHub("hf_SomeOtherToken") as fake:
            monkeypatch.setenv("HF_ENDPOINT", fake.url)
            refused = error_text(await c.call_tool("push_to_hub", {"repo_id": "me/tiny", "eval_bytes": 0}))
            private = error_text(await c.call_tool("pull_from_hub", {"repo_id": "me/tiny"}))
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
        offline = error_text(await c.call_tool("pull_from_hub", {"repo_id": "me/tiny"}))
        names = [ck["name"] for ck in (await call(c, "list_checkpoints", {}))["checkpoints"]]
    assert "(401)" in refused and "HF_TOKEN" in refused and "write access" in refused
    assert "(401)" in private and "HF_TOKEN" in private
    assert "cannot reach the Hugging Face Hub" in offline
    assert not any(n.startswith("hub/") for n in names)  # a failed pull leaves nothing behind
    assert TOKEN not in refused + private + offline + caplog.text
