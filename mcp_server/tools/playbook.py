"""playbook_list / playbook_step: the optimization playbook as data (recipes of tool calls + expectations)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import Field

from .. import playbook_hook as hook
from ..budget import RESULT_BUDGET, compact
from ..views import PlaybookView
from .common import guarded, read_only
from .compact import dump, reply

Scale = Annotated[Literal["smoke", "full"], Field(description="full: the real run (hours).")]
Detail = Annotated[bool, Field(description="Add why/notes and the prompt text.")]
NO_VALUE = ("exists", "is null", "not null", "finite", "nondecreasing", "nonincreasing")


def _check(e: dict[str, Any]) -> str:
    """One expectation as a line: 'plan.total_updates == $.plan.updates_per_epoch' (+ each/tol/fix)."""
    op = e.get("op", "==")
    text = f"{e['path']} {op}" + ("" if op in NO_VALUE else f" {json.dumps(e.get('value'))}")
    if e.get("each"):
        text += " (each)"
    if e.get("tol") is not None:
        text += f" (tol {e['tol']:g})"
    if e.get("fix"):
        text += f" FIX: {e['fix']}"
    return text


def compact_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe without prose: the calls to make and the checks on their results."""
    steps = []
    for s in recipe.get("steps") or []:
        step: dict[str, Any] = {"id": s.get("id"), "tool": s.get("tool"), "args": s.get("args") or {}}
        for key in ("wait", "precondition"):
            if s.get(key):
                step[key] = True
        if s.get("fetch"):
            step["fetch"] = s["fetch"]
        if s.get("expect_error"):
            step["expect_error"] = s["expect_error"]
        if s.get("expect"):
            step["checks"] = [_check(e) for e in s["expect"]]
        steps.append(step)
    out = {k: recipe.get(k) for k in ("id", "phase", "scale", "title") if recipe.get(k) is not None}
    if recipe.get("preconditions"):
        out["preconditions"] = recipe["preconditions"]
    out["steps"] = steps
    return out


def page(recipe: dict[str, Any], scale: str, from_step: int) -> PlaybookView:
    """The recipe's steps from ``from_step`` on, as many as fit the result budget (at least one)."""
    steps = recipe["steps"]
    if from_step and from_step >= len(steps):
        raise ToolError(f"from_step={from_step}: recipe {recipe.get('id')} has {len(steps)} steps (0-{len(steps) - 1})")
    head = {k: v for k, v in recipe.items() if k != "steps" and (from_step == 0 or k != "preconditions")}
    view = PlaybookView(available=True, scale=scale, recipe={**head, "steps": steps[from_step:]})
    end = len(steps)
    while end > from_step + 1 and len(compact(dump(view))) > RESULT_BUDGET - 64:
        end -= 1
        view = PlaybookView(available=True, scale=scale, recipe={**head, "steps": steps[from_step:end]},
                            first_step=from_step, next_step=end, total_steps=len(steps))
    return view


def register(server: MCPServer, app) -> None:
    @server.tool(annotations=read_only("List playbook recipes"))
    @guarded
    def playbook_list(scale: Scale = "smoke", detail: Detail = False) -> Annotated[CallToolResult, PlaybookView]:
        """The playbook's recipes in order (Phase 1 checks 1-12 and sanity, Phase 2 tasks A-C): id, phase, title
        (detail=true: why, preconditions, tools). playbook_run(task_id or phase) runs and checks them for you;
        playbook_step(task_id) gives one recipe's calls to make yourself."""
        try:
            recipes = hook.list_recipes(scale)
        except hook.PlaybookUnavailable as err:
            raise ToolError(str(err)) from err
        if not detail:
            recipes = [{k: r.get(k) for k in ("id", "phase", "title")} for r in recipes]
        return reply(PlaybookView(available=True, scale=scale, recipes=recipes))

    @server.tool(annotations=read_only("Get one playbook recipe"))
    @guarded
    def playbook_step(
        task_id: Annotated[str, Field(min_length=1, max_length=40, description="Recipe id, e.g. '1', '12', 'A'.")],
        scale: Scale = "smoke",
        detail: Detail = False,
        from_step: Annotated[int, Field(ge=0, le=100, description="First step (a result's next_step).")] = 0,
    ) -> Annotated[CallToolResult, PlaybookView]:
        """One recipe's preconditions and ordered steps (tool, exact args) with the checks each result must pass
        ('path op value'; $steps.<id>.x = an earlier step's result, $.x this one). A wait step: poll
        get_job(job_id, wait_s=50) until active is false, then check get_job(job_id, **fetch). A failed
        precondition refuses the recipe: report its FIX. When next_step is set, call again with from_step."""
        try:
            recipe = hook.get_recipe(task_id, scale)
            prompt = hook.prompt_text(task_id, scale) if detail else None
        except hook.PlaybookUnavailable as err:
            raise ToolError(str(err)) from err
        if not detail:
            return reply(page(compact_recipe(recipe), scale, from_step))
        return reply(PlaybookView(available=True, scale=scale, recipe=recipe, prompt=prompt))
