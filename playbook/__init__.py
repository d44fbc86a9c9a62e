"""The optimization-and-training playbook as data (recipes of tool calls + expectations) and a runner.

The data layer (this module's exports: ``list_recipes``, ``get_recipe``, ``export_recipes``, ``render_prompt``,
``brief_report``)
imports only pydantic and the standard library, so the MCP server can serve it. The runner
(``python -m playbook run``, :mod:`playbook.runner`) talks to the server over MCP only, like any agent.
"""

from .model import SCALES, Expect, Recipe, RecipeSummary, ResolvedRecipe, Step
from .prompts import render_prompt
from .recipes import UnknownTask, export_recipes, get_recipe, list_recipes, resolve, select, task_ids
from .report import brief as brief_report

__all__ = [
    "SCALES",
    "Expect",
    "Recipe",
    "RecipeSummary",
    "ResolvedRecipe",
    "Step",
    "UnknownTask",
    "brief_report",
    "export_recipes",
    "get_recipe",
    "list_recipes",
    "render_prompt",
    "resolve",
    "select",
    "task_ids",
]
