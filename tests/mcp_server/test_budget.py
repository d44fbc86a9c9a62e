"""The context budget (mcp_server/budget.py) and the tool contract, measured as an agent host sees them.

The contract snapshot pins tool names, argument names and types, and result field names, so a change to what
agents see is deliberate. After an intended change, regenerate it and commit the JSON with the change:

    BT_UPDATE_CONTRACT=1 .venv/bin/python -m pytest tests/mcp_server/test_budget.py -k contract
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mcp.client import Client

from mcp_server.budget import RESULT_BUDGET, TOOLS_BUDGET, app_only, compact, result_bytes, tools_bytes
from tests.hub_fake import FakeHub

from .conftest import call, new_server
from .test_dashboard import AppsClient

pytestmark = pytest.mark.anyio
CONTRACT = Path(__file__).with_name("tool_contract.json")
UPDATE = "BT_UPDATE_CONTRACT=1 .venv/bin/python -m pytest tests/mcp_server/test_budget.py -k contract"

# Arguments for tools that need some; every other tool is called with none.
ARGS = {
    "patch_config": {"patch": {"train": {"lr": 0.002}}},
    "load_checkpoint": {"name": "latest"},
    "playbook_step": {"task_id": "C"},  # the longest recipe
    "delete": {"export": "tiny", "dry_run": True},
    "export_int8": {"name": "tiny", "eval_bytes": 256},
    "evaluate": {"max_bytes": 512},
    "generate": {"max_bytes": 16, "seed": 0},
    "scale_up": {"layers": 3},
    "train": {"steps": 2},
    "playbook_run": {"task_id": "12", "wait_s": 120},  # runs to its end: the PASS/FAIL table is measured
    "push_to_hub": {"repo_id": "me/tiny", "eval_bytes": 256},  # to a local stand-in for the Hub (hub_fake.py)
    "pull_from_hub": {"repo_id": "me/tiny"},
}
# export before delete reads it, push before pull downloads it; cancel the job train starts
FIRST, LAST = ["export_int8", "push_to_hub"], ["train", "cancel_job"]
# Headroom under the budgets, pinned: a new tool, argument or result field pays for itself (trim something else)
# rather than eating the margin, so the next one does not break CI at the edge.
# Raised from 23,200 for issue 25: push_to_hub and pull_from_hub (+1,270 B) and export_int8(bits) (+158 B), less
# 230 B trimmed from get_config, get_job, inspect_attention and list_exports. The pin leaves 526 B under the budget:
# the next tool or argument trims first.
TOOLS_PIN = 24_050  # of TOOLS_BUDGET (24,576)
GET_CONFIG_PIN = 1_900  # get_config's default result on the test config, of RESULT_BUDGET (2,048)


def _arg_type(schema: dict) -> str:
    t = schema.get("type")
    if t is None and "anyOf" in schema:
        t = [s.get("type") for s in schema["anyOf"]]
    if isinstance(t, list):
        return "|".join(str(x) for x in t)
    return str(t)


def contract(tools) -> dict:
    out = {}
    for t in sorted(tools, key=lambda t: t.name):
        props = (t.input_schema or {}).get("properties") or {}
        out[t.name] = {"args": {k: _arg_type(v) for k, v in props.items()},
                       "result": sorted((t.output_schema or {}).get("properties") or {})}
    return out


async def test_tools_list_fits_the_budget(tmp_path):
    async with Client(new_server(tmp_path / "ws")) as c:
        tools = (await c.list_tools()).tools
    every, visible = tools_bytes(tools)
    print(f"tools/list: {visible} bytes model-visible, {every} bytes all {len(tools)} tools (budget {TOOLS_BUDGET})")
    assert visible <= TOOLS_BUDGET, f"tools/list is {visible} bytes for the model; the budget is {TOOLS_BUDGET}"
    assert visible <= TOOLS_PIN, (f"tools/list is {visible} bytes, over the pinned {TOOLS_PIN}: make room by "
                                  "tightening descriptions elsewhere before raising the pin")
    for t in tools:
        assert t.description and "\n    " not in t.description, f"{t.name}: indented docstring text on the wire"
        if not app_only(t):
            schema = json.dumps(t.output_schema or {})
            assert "$defs" not in schema and '"description"' not in schema, f"{t.name}: output schema not compact"


async def test_every_default_result_fits_the_budget(trained_ws, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    with FakeHub("hf_BudgetTestToken") as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", fake.token)
        await _every_default_result(trained_ws)


async def _every_default_result(trained_ws):
    sizes: dict[str, int] = {}
    async with Client(new_server(trained_ws), extensions=[AppsClient()]) as c:  # every tool, app-only too
        tools = (await c.list_tools()).tools
        names = sorted((t.name for t in tools), key=lambda n: (n not in FIRST, n in LAST, LAST.index(n) if n in LAST
                                                                  else 0, n))
        for name in names:
            res = await c.call_tool(name, ARGS.get(name, {}))
            # cancel_job may find the 2-step job already ended
            assert not res.is_error or name == "cancel_job", (name, res.content[0].text)
            sizes[name] = result_bytes(res)
            if name == "playbook_run":  # its final table, within the budget
                assert res.structured_content["summary"] == "1/1 recipes passed", res.structured_content
            if res.structured_content is not None and not name.startswith("dashboard"):  # text = the same JSON
                assert res.content[0].text == compact(res.structured_content), name
        job = await call(c, "get_job", {"job_id": "job-0001"})
        asked = await call(c, "get_job", {"job_id": "job-0001", "include": ["all"], "history": 1000})
    print("default result bytes:", json.dumps(sizes))
    over = {n: b for n, b in sizes.items() if b > RESULT_BUDGET}
    assert not over, f"default results over {RESULT_BUDGET} bytes: {over}"
    assert sizes["get_config"] <= GET_CONFIG_PIN, (f"get_config's default result is {sizes['get_config']} bytes, "
                                                   f"over the pinned {GET_CONFIG_PIN}: keep new fields out of the "
                                                   "compact view (mcp_server/inert.py) or trim it")
    # The default get_job carries what an agent decides on, and detail only when asked for.
    assert {"status", "progress", "step", "eval", "gate", "checkpoint", "next"} <= set(job)
    assert job["step"]["bpb"] > 0 and job["eval"]["val_bpb"] > 0 and job["gate"]["state"] in ("ok", "burn-in")
    assert job["step"]["bits_per_s"] > 0  # throughput, in the compact view
    assert "history" not in job and "plan" not in job
    # The result section is the outcome: plan, last step and last eval are their own sections, not repeated.
    assert asked["result"]["updates_done"] == job["progress"]["total_updates"]
    assert not {"plan", "last_step", "last_eval"} & set(asked["result"])
    assert len(asked["history"]) > 1 and asked["plan"]["total_updates"] == job["progress"]["total_updates"]
    assert result_bytes_of(asked) > RESULT_BUDGET or len(asked["history"]) < 20


def result_bytes_of(data: dict) -> int:
    return len(compact(data).encode())


async def test_tool_contract_matches_the_snapshot(tmp_path):
    async with Client(new_server(tmp_path / "ws"), extensions=[AppsClient()]) as c:  # every tool, app-only too
        now = contract((await c.list_tools()).tools)
    if os.environ.get("BT_UPDATE_CONTRACT"):
        CONTRACT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        pytest.skip(f"wrote {CONTRACT.name}")
    pinned = json.loads(CONTRACT.read_text(encoding="utf-8"))
    changes = []
    for name in sorted(set(pinned) | set(now)):
        if name not in now:
            changes.append(f"tool {name!r} removed")
        elif name not in pinned:
            changes.append(f"tool {name!r} added: {now[name]}")
        elif pinned[name] != now[name]:
            for part in ("args", "result"):
                if pinned[name][part] != now[name][part]:
                    changes.append(f"{name}.{part}: {pinned[name][part]} -> {now[name][part]}")
    assert not changes, ("the tool contract agents see changed:\n  " + "\n  ".join(changes)
                         + "\nIf this is deliberate, regenerate the snapshot and commit it with the change:\n  "
                         + UPDATE)
