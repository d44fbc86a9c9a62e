"""The playbook seam: clear errors without the package, tools/resources/prompts with it (a stand-in here)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from mcp.client import Client

from .conftest import call, error_text, new_server

pytestmark = pytest.mark.anyio

RECIPES = [
    {"id": "1", "phase": 1, "title": "Exact scheduler horizon", "why": "OneCycle must end where training ends.",
     "steps": [{"tool": "train", "args": {"steps": 4}}]},
    {"id": "A", "phase": 2, "title": "8x256 ACT baseline", "why": "The validated sweet spot.", "steps": []},
]


@pytest.fixture
def fake_playbook(monkeypatch):
    mod = types.ModuleType("playbook")

    def get_recipe(task_id, scale="smoke"):
        for r in RECIPES:
            if r["id"] == task_id:
                return {**r, "scale": scale}
        raise KeyError(task_id)

    mod.list_recipes = lambda scale="smoke": [{**r, "scale": scale} for r in RECIPES]
    mod.get_recipe = get_recipe
    mod.export_recipes = lambda scale="smoke": [{**r, "scale": scale} for r in RECIPES]
    mod.render_prompt = lambda target, scale="smoke": f"PROMPT for {target} at {scale}"
    monkeypatch.setitem(sys.modules, "playbook", mod)
    return mod


async def test_without_playbook_tools_say_why(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "playbook", types.ModuleType("playbook"))  # present but empty
    async with Client(new_server(tmp_path / "ws")) as c:
        msg = error_text(await c.call_tool("playbook_list", {}))
        assert "list_recipes" in msg and "incomplete" in msg and "pip install" in msg
        assert "incomplete" in error_text(await c.call_tool("playbook_step", {"task_id": "1"}))
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert {"run_playbook", "playbook_phase_1", "playbook_phase_2"} <= prompts
        text = (await c.get_prompt("playbook_phase_1", {"scale": "smoke"})).messages[0].content.text
        assert "playbook_list" in text and "Phase 1" in text


async def test_with_playbook_tools_resources_prompts(tmp_path, fake_playbook):
    async with Client(new_server(tmp_path / "ws")) as c:
        listed = await call(c, "playbook_list", {"scale": "full"})
        assert [r["id"] for r in listed["recipes"]] == ["1", "A"] and listed["scale"] == "full"
        listed = await call(c, "playbook_list", {"scale": "full", "detail": True})
        assert listed["recipes"][0]["scale"] == "full"
        step = await call(c, "playbook_step", {"task_id": "A"})
        assert step["recipe"]["title"] == "8x256 ACT baseline" and "prompt" not in step  # compact by default
        step = await call(c, "playbook_step", {"task_id": "A", "detail": True})
        assert step["recipe"]["title"] == "8x256 ACT baseline" and step["prompt"] == "PROMPT for A at smoke"
        msg = error_text(await c.call_tool("playbook_step", {"task_id": "Z"}))
        assert "unknown playbook task 'Z'" in msg and "['1', 'A']" in msg
        assert "scale" in error_text(await c.call_tool("playbook_list", {"scale": "huge"}))
        recipes = json.loads((await c.read_resource("bt://playbook")).contents[0].text)
        assert recipes[1]["id"] == "A"
        assert recipes[0]["steps"] == [{"tool": "train", "args": {"steps": 4}}]  # full recipes, not summaries
        one = json.loads((await c.read_resource("bt://playbook/full/1")).contents[0].text)
        assert one["scale"] == "full"
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert {"playbook_task_1", "playbook_task_A"} <= prompts
        text = (await c.get_prompt("playbook_task_1", {"scale": "full"})).messages[0].content.text
        assert text == "PROMPT for 1 at full"
