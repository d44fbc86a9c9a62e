"""The recipe data: order, well-formed steps and expectations, seed flags kept at every scale, served text."""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import sys

import anyio
import pytest

import playbook
from playbook import expect as ex
from playbook.model import OPS, SCALES, ResolvedRecipe
from playbook.recipes import UnknownTask, export_recipes, get_recipe, list_recipes, load_recipes, normalize_id, select
from tests.seed_commands import SEED_FLAGS

ORDER = [str(i) for i in range(1, 13)] + ["sanity", "A", "B", "C"]
ARCH = ("layers", "d_model", "nhead", "causal", "chunk_size", "act", "reversible", "checkpointing", "full_attn_logging")


def _flags(text: str) -> dict:
    words = shlex.split(text)
    out = {}
    for k, v in zip(words[::2], words[1::2], strict=True):
        out[k.removeprefix("--")] = {"true": True, "false": False}.get(v, int(v) if v.isdigit() else v)
    return out


def _refs(value) -> list[str]:
    text = json.dumps(value)
    return re.findall(r"\$steps\.([A-Za-z_]\w*)", text)


def test_recipes_are_in_playbook_order():
    assert [r.id for r in load_recipes()] == ORDER
    assert [r.phase for r in load_recipes()] == [1] * 13 + [2] * 3
    for scale in SCALES:
        assert [s.id for s in list_recipes(scale)] == ORDER
        assert [r.order for r in export_recipes(scale)] == list(range(16))


@pytest.mark.parametrize("scale", SCALES)
def test_every_recipe_is_well_formed(scale):
    for r in export_recipes(scale):
        assert r.title and r.why and r.steps, r.id
        assert "$scale" not in json.dumps(r.model_dump(mode="json")), f"{r.id}: unresolved scaled value"
        seen: list[str] = []
        for step in r.steps:
            assert step.id not in seen, f"{r.id}: duplicate step id {step.id}"
            assert step.tool, r.id
            if step.wait:
                assert step.tool == "train", f"{r.id}/{step.id}: only train starts jobs"
            for e in step.expect:
                assert e.op in OPS
                if e.path.startswith("="):
                    ast.parse(re.sub(r"\$[\w.\[\]\-:=*]+", "x", e.path[1:]), mode="eval")
                else:
                    ex._segments(e.path)  # parses
                if isinstance(e.value, str) and e.value.startswith("="):
                    ast.parse(re.sub(r"\$[\w.\[\]\-:=*]+", "x", e.value[1:]), mode="eval")
                # references point to earlier steps of the same recipe (or this one via $.)
                for ref in _refs(e.model_dump()):
                    assert ref in seen, f"{r.id}/{step.id}: {ref!r} is not an earlier step"
            seen.append(step.id)


def test_recipe_tools_exist_on_the_server(tmp_path):
    from mcp.client import Client

    from mcp_server.app import build_server

    async def names() -> set[str]:
        async with Client(build_server(tmp_path / "ws")) as c:
            return {t.name for t in (await c.list_tools()).tools}

    tools = anyio.run(names)
    used = {s.tool for r in export_recipes("smoke") for s in r.steps}
    assert used <= tools, f"tools missing on the server: {used - tools}"
    assert {"get_job", "playbook_list", "playbook_step"} <= tools


def _config(recipe: ResolvedRecipe, step_id: str = "cfg") -> dict:
    return next(s for s in recipe.steps if s.id == step_id).args["patch"]


@pytest.mark.parametrize("task", ["A", "B", "C"])
def test_phase2_keeps_the_seed_flags_at_every_scale(task):
    seed = _flags(SEED_FLAGS[task])
    for scale in SCALES:
        r = get_recipe(task, scale)
        assert _flags(r.seed.split(" (")[0]) == seed  # the recipe quotes the seed verbatim
        cfg = _config(r)
        merged = {**cfg["model"], **cfg["train"]}
        for flag, value in seed.items():
            if flag == "batch_size" and scale == "smoke":
                assert merged[flag] < value  # smoke shrinks the micro-batch only
                continue
            assert merged[flag] == value, f"{task}@{scale}: {flag}={merged[flag]!r}, seed says {value!r}"
        # architecture flags are identical at both scales
    smoke, full = _config(get_recipe(task, "smoke")), _config(get_recipe(task, "full"))
    for key in ARCH:
        assert smoke["model"].get(key) == full["model"].get(key), key
    for key in ("accum_steps", "amp", "lr_schedule", "quantization", "qat"):
        assert smoke["train"].get(key) == full["train"].get(key), key


def test_smoke_is_small_and_full_is_real():
    for task in ("A", "B", "C"):
        smoke, full = _config(get_recipe(task, "smoke")), _config(get_recipe(task, "full"))
        assert 144 <= smoke["model"]["max_seq_len"] <= 288 < full["model"]["max_seq_len"]
        assert smoke["train"]["steps"] <= 5 and full["train"]["steps"] >= 10_000
        assert smoke["data"]["source"] == "builtin" and smoke["data"]["max_bytes"] <= 100_000
        assert full["data"]["source"] == "hf"
    for r in select(phase=1, scale="smoke"):
        if r.id == "sanity":  # the sanity fit needs more text to learn on (tests/playbook/test_sanity_recipe.py)
            continue
        reset = r.steps[0]
        assert reset.id == "reset" and reset.args["patch"]["data"]["max_bytes"] <= 16384


def test_task_c_has_an_enforced_precondition():
    for scale in SCALES:
        r = get_recipe("C", scale)
        pre = [s for s in r.steps if s.precondition]
        assert [s.id for s in pre] == ["plan", "data"]
        assert all(e.fix for s in pre for e in s.expect), "a refusal must say what to change"
        train_at = [s.id for s in r.steps].index("job")
        assert all([s.id for s in r.steps].index(s.id) < train_at for s in pre)
        assert r.override is None  # no silent override at any scale
    smoke = get_recipe("C", "smoke")
    a = _config(get_recipe("A", "smoke"))
    c = _config(smoke, "plan")
    assert c["data"]["max_bytes"] > 2 * a["data"]["max_bytes"]  # smoke expands the data for real


def test_ids_are_normalized_and_unknown_ids_listed():
    assert normalize_id("task 1") == "1" and normalize_id("a") == "A" and normalize_id("Task-C") == "C"
    assert normalize_id("01") == "1"
    with pytest.raises(UnknownTask, match="tasks are 1, 2, 3"):
        get_recipe("Z")
    with pytest.raises(ValueError, match="unknown scale"):
        get_recipe("1", "huge")
    assert [r.id for r in select(phase=2)] == ["A", "B", "C"]
    assert [r.id for r in select(task=["12", "a"])] == ["12", "A"]


def test_resolved_recipes_are_copies():
    r = get_recipe("1")
    r.steps.clear()
    assert get_recipe("1").steps


def test_server_hook_api_and_prompts():
    summaries = playbook.list_recipes("smoke")
    assert summaries[0].tools == ["patch_config", "train"] and summaries[-1].preconditions
    recipe = playbook.get_recipe("C", "full")
    assert recipe.scale == "full" and "playbook_step" not in recipe.how_to
    assert "get_job" in recipe.how_to
    text = playbook.render_prompt("6", "smoke")
    assert "history[update=2].compress_prob" in text and "train(" in text
    for target in ("all", "phase-1", "phase-2"):
        body = playbook.render_prompt(target)
        assert "playbook_step" in body
    assert "C. Cautious scale-up" in playbook.render_prompt("phase-2")


def test_data_layer_imports_neither_mcp_nor_torch():
    code = ("import sys, playbook; playbook.render_prompt('all'); playbook.get_recipe('C', 'full'); "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'torch', 'playbook.runner'));"
            "bad += [m for m in sys.modules if m == 'playbook.runner']; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
