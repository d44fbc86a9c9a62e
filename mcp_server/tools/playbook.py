"""playbook_list / playbook_step: the optimization playbook as data (recipes of tool calls + expectations)."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from .. import playbook_hook as hook
from ..views import PlaybookView
from .common import guarded, read_only

Scale = Annotated[Literal["smoke", "full"], Field(description="smoke: CPU-sized in minutes; full: the real run.")]


def register(server: MCPServer, app) -> None:
    @server.tool(annotations=read_only("List playbook recipes"))
    @guarded
    def playbook_list(scale: Scale = "smoke") -> PlaybookView:
        """The playbook's recipes in order (Phase 1 checks 1-12, Phase 2 training tasks A-C): id, phase, title and
        why; run each with playbook_step(task_id) top to bottom."""
        try:
            recipes = hook.list_recipes(scale)
        except hook.PlaybookUnavailable as err:
            raise ToolError(str(err)) from err
        return PlaybookView(available=True, scale=scale, recipes=recipes)

    @server.tool(annotations=read_only("Get one playbook recipe"))
    @guarded
    def playbook_step(
        task_id: Annotated[str, Field(min_length=1, max_length=40, description="Recipe id, e.g. '1', '12', 'A'.")],
        scale: Scale = "smoke",
    ) -> PlaybookView:
        """One recipe: its preconditions and the ordered tool calls (name + arguments) with the expectations each
        result must meet. Execute the calls in order with this server's tools and compare."""
        try:
            recipe = hook.get_recipe(task_id, scale)
            prompt = hook.prompt_text(task_id, scale)
        except hook.PlaybookUnavailable as err:
            raise ToolError(str(err)) from err
        return PlaybookView(available=True, scale=scale, recipe=recipe, prompt=prompt)
