"""The playbook's recipes in order, resolved per scale; the API the MCP server serves them through.

``list_recipes(scale)`` (summaries for playbook_list), ``get_recipe(task_id, scale)`` (one recipe with concrete
tool calls and expectations, for playbook_step), ``export_recipes(scale)`` (all of them in full). Pure data:
no mcp, no torch.
"""

from __future__ import annotations

from functools import cache

from . import phase1, phase2, sanity
from .detail import add_detail
from .model import SCALES, Recipe, RecipeSummary, ResolvedRecipe, Scale, resolve_scale

# The one polling advice (prompts, recipes, the runner): compact polls under the ~60 s client timeout, then one
# detailed call. 50 s polls of a <= 2 KB result cost an agent under 150 KB per hour of training.
POLL_S = 50
POLL_ADVICE = (
    f"poll get_job(job_id=<the job_id it returned>, wait_s={POLL_S}) (a compact status: progress, ETA, latest "
    "step and eval) until `active` is false, then call get_job(job_id, **fetch) once with the step's `fetch` "
    "arguments (include=[...] detail sections, history=N); the expectations apply to that result"
)
HOW_TO = (
    "Execute the steps in order with this server's tools, passing each step's args exactly. For a step with "
    f"wait=true (train), {POLL_ADVICE}. Check every expectation against the tool's "
    "structured result: `path` is a field ('plan.total_updates', 'history[-1].lr', 'layers[*].is_causal' with "
    "each=true for every item, 'evals[0:4]' a slice, 'history[update=3]' the item whose update is 3, or "
    "'=expression'); `value` is a literal, '$steps.<id>.<path>' (an earlier step's result), '$.<path>' (this "
    "result) or '=expression' (arithmetic with ceil, floor, min, max, sqrt, cos, pi, len). '~=' allows a relative "
    "difference of `tol` (default 1e-6). Report PASS/FAIL with the measured value for each. If a step marked "
    "precondition=true fails an expectation, stop the recipe and report it as refused with the `fix` text, "
    "unless the user explicitly overrides it."
)


class UnknownTask(ValueError):
    """A task id that is not in the playbook."""


@cache
def load_recipes() -> tuple[Recipe, ...]:
    """Raw recipes (with per-scale values) in playbook order: Phase 1 tasks 1-12, the sanity fit, then A, B, C."""
    recipes = (*phase1.recipes(), *sanity.recipes(), *phase2.recipes())
    ids = [r.id for r in recipes]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"duplicate recipe ids: {ids}")
    return recipes


def task_ids() -> list[str]:
    return [r.id for r in load_recipes()]


def _check_scale(scale: str) -> Scale:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return scale  # type: ignore[return-value]


def normalize_id(task_id: str) -> str:
    """'A', 'a', 'task 1', 'Task-A', '01' -> the recipe id."""
    text = str(task_id).strip().lower().removeprefix("task").strip(" -_:")
    for rid in task_ids():
        if text == rid.lower() or (text.isdigit() and rid.isdigit() and int(text) == int(rid)):
            return rid
    raise UnknownTask(f"unknown playbook task {task_id!r}; tasks are {', '.join(task_ids())}")


@cache
def _resolved(task_id: str, scale: Scale) -> ResolvedRecipe:
    recipes = load_recipes()
    order = [r.id for r in recipes].index(task_id)
    data = resolve_scale(recipes[order].model_dump(mode="python"), scale)
    recipe = ResolvedRecipe.model_validate({**data, "scale": scale, "order": order, "how_to": HOW_TO})
    add_detail(recipe.steps)
    return recipe


def resolve(task_id: str, scale: str = "smoke") -> ResolvedRecipe:
    """One recipe at ``scale`` with every value concrete (a fresh copy: callers may modify it)."""
    return _resolved(normalize_id(task_id), _check_scale(scale)).model_copy(deep=True)


def get_recipe(task_id: str, scale: str = "smoke") -> ResolvedRecipe:
    """What playbook_step(task_id, scale) returns. Raises UnknownTask (a ValueError) naming the valid ids."""
    return resolve(task_id, scale)


def select(phase: int | None = None, task: str | list[str] | None = None, scale: str = "smoke") -> list[ResolvedRecipe]:
    """Recipes to run, in playbook order: all, one phase, or the given task ids."""
    wanted = None
    if task:
        wanted = {normalize_id(t) for t in ([task] if isinstance(task, str) else task)}
    out = []
    for r in load_recipes():
        if phase is not None and r.phase != phase:
            continue
        if wanted is not None and r.id not in wanted:
            continue
        out.append(resolve(r.id, scale))
    return out


def summary(recipe: ResolvedRecipe) -> RecipeSummary:
    tools = list(dict.fromkeys(s.tool for s in recipe.steps))
    return RecipeSummary(id=recipe.id, phase=recipe.phase, title=recipe.title, why=recipe.why,
                         preconditions=recipe.preconditions, tools=tools, n_steps=len(recipe.steps),
                         order=recipe.order)


def list_recipes(scale: str = "smoke") -> list[RecipeSummary]:
    """What playbook_list returns: every recipe's id, phase, title, why, preconditions, in order."""
    return [summary(r) for r in select(scale=scale)]


def export_recipes(scale: str = "smoke") -> list[ResolvedRecipe]:
    """Every recipe in full at ``scale`` (for a resource or a file)."""
    return select(scale=scale)
