"""Prompts an agent can follow with tools alone: valid scales only, tool-checked preconditions, fix texts, one
polling advice."""

from __future__ import annotations

import re

import anyio
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError

from mcp_server.app import build_server
from playbook.recipes import POLL_S, select


def _prompts(ws, calls):
    async def go():
        async with Client(build_server(ws)) as c:
            out = {}
            for name, args in calls:
                try:
                    out[name, args.get("scale")] = (await c.get_prompt(name, args)).messages[0].content.text
                except MCPError as err:
                    out[name, args.get("scale")] = err
            return out

    return anyio.run(go)


def test_unknown_scale_is_an_error_listing_the_valid_ones(tmp_path):
    got = _prompts(tmp_path / "ws", [("playbook_phase_1", {"scale": "huge"}), ("playbook_task_7", {"scale": "x"}),
                                    ("run_playbook", {"scale": "big"})])
    for err in got.values():
        assert isinstance(err, MCPError) and "use one of smoke, full" in str(err), err


def test_prompts_need_no_runner_flags_and_carry_fixes_and_one_poll_advice(tmp_path):
    names = [("run_playbook", {}), ("playbook_phase_1", {}), ("playbook_phase_2", {"scale": "full"})]
    names += [(f"playbook_task_{r.id}", {"scale": "full"}) for r in select(scale="full")]
    texts = _prompts(tmp_path / "ws", names)
    for key, text in texts.items():
        assert isinstance(text, str), (key, text)
        assert not re.search(r"--(phase|override|task|scale)\b", text), (key, "cites a runner flag")
        assert not re.search(r"wait_s=\d+, history", text) and "wait_s=30" not in text, key  # polls stay compact
        polls = set(re.findall(r"get_job\(job_id[^)]*wait_s=(\d+)", text))
        assert polls <= {str(POLL_S)}, (key, polls)
    task_c = texts["playbook_task_C", "full"]
    assert "FIX if it fails: lower train.lr" in task_c and "expand the data" in task_c
    assert "[plan] patch_config" in task_c and "[data] prepare_data" in task_c  # which calls check preconditions
    assert 'include=["evals"]' in texts["playbook_task_7", "full"]  # the one detailed call after polling


@pytest.mark.parametrize("scale", ["smoke", "full"])
def test_every_fix_text_reaches_the_prompt(scale, tmp_path):
    from playbook.prompts import recipe_prompt

    for r in select(scale=scale):
        text = recipe_prompt(r)
        for s in r.steps:
            for e in s.expect:
                if e.fix:
                    assert e.fix in text, (r.id, e.fix)
