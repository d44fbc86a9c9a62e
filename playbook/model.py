"""The recipe data model: recipes, steps (tool calls) and expectations on their results.

Pure data (pydantic + stdlib): the MCP server imports it to serve ``playbook_list`` / ``playbook_step``,
so nothing here may import ``mcp`` or the runner.

Scale-dependent values are written ``{"$scale": {"smoke": ..., "full": ...}}`` anywhere in a recipe
(arguments, expectation values); :func:`resolve_scale` replaces them with the value for one scale.

Expectation values (and paths that start with ``=``) understand three forms:

* a literal (``6``, ``"bf16"``, ``true``, ``null``);
* a reference ``"$steps.<step id>.<path>"`` to an earlier step's result, or ``"$.<path>"`` to this result;
* an expression ``"=ceil($steps.cfg.derived.train_windows / 8)"``: arithmetic, comparisons, ``and``/``or``,
  ``ceil floor round min max abs sqrt log cos sin len`` and ``pi``, over references and numbers.

Paths are dotted keys with list indexes: ``plan.total_updates``, ``history[-1].lr``, ``evals[0].gate.triggered``,
``layers[*].is_causal`` (every element; use with ``each``), ``evals[0:4].gate.triggered`` (a slice, also
with ``each``), ``history[update=3].compress_prob`` (the first element whose ``update`` equals 3).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Scale = Literal["smoke", "full"]
SCALES: tuple[Scale, ...] = ("smoke", "full")

Op = Literal[
    "==", "!=", "<", "<=", ">", ">=", "~=", "in", "not in", "contains", "matches",
    "exists", "is null", "not null", "finite", "nondecreasing", "nonincreasing", "len ==", "len >=",
]
OPS: tuple[str, ...] = Op.__args__  # type: ignore[attr-defined]


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Expect(_Data):
    """One expectation on a tool result: ``<path> <op> <value>``."""

    path: str = Field(description="Field of the result (dotted, with [i], [*], [key=value]) or '=expression'.")
    op: Op = "=="
    value: Any = Field(None, description="Literal, '$steps.<id>.<path>' / '$.<path>' reference, or '=expression'.")
    tol: float | None = Field(None, ge=0, description="'~=': allowed relative difference (default 1e-6), with the "
                              "same number as an absolute floor.")
    each: bool = Field(False, description="The path yields a list: the op must hold for every (>= 1) element.")
    why: str = Field("", description="What this expectation proves.")
    fix: str = Field("", description="For preconditions: what to change when it fails.")
    key: bool = Field(False, description="Shown in the runner's summary table.")


class Step(_Data):
    """One tool call and what its result must show."""

    id: str = Field(description="Name of the result, for '$steps.<id>...' references.")
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    wait: bool = Field(False, description="The call starts a job: poll get_job(job_id, wait_s, history) until it "
                       "is no longer active; the expectations apply to that final job view.")
    precondition: bool = Field(False, description="A failed expectation refuses the recipe (it stops; the "
                               "reason is reported) instead of failing it.")
    expect: list[Expect] = Field(default_factory=list)
    fetch: dict[str, Any] | None = Field(None, description="wait steps: after the job ends, call get_job(job_id, "
                                         "**fetch) once; its result is what the expectations read (polls stay "
                                         "compact). Set when the recipe is resolved.")
    expect_error: str | None = Field(None, description="Regex: the call must fail with a matching error message.")
    note: str = Field("", description="What the step does and why.")


class Recipe(_Data):
    """A playbook task as ordered tool calls. Raw recipes may hold ``$scale`` values; resolved ones do not."""

    id: str
    phase: Literal[1, 2]
    title: str
    why: str = Field(description="Why the recipe exists: what it proves or produces.")
    seed: str = Field("", description="The seed playbook's instruction this recipe encodes.")
    preconditions: list[str] = Field(default_factory=list, description="In words; enforced by precondition steps.")
    override: Any = Field(None, description="Reason to report failed preconditions without refusing (per scale).")
    steps: list[Step]


class ResolvedRecipe(Recipe):
    """A recipe at one scale: every value concrete, plus how to execute it."""

    scale: Scale
    order: int = Field(description="Position in the playbook (0-based).")
    how_to: str = ""


class RecipeSummary(_Data):
    """What playbook_list shows per recipe."""

    id: str
    phase: Literal[1, 2]
    title: str
    why: str
    preconditions: list[str]
    tools: list[str] = Field(description="Tools the recipe calls, in first-use order.")
    n_steps: int
    order: int


def scaled(smoke: Any, full: Any) -> dict[str, Any]:
    """A value that differs by scale (kept as plain JSON so raw recipes serialize)."""
    return {"$scale": {"smoke": smoke, "full": full}}


def resolve_scale(value: Any, scale: Scale) -> Any:
    """Replace every ``{"$scale": {...}}`` in ``value`` (recursively) by its entry for ``scale``."""
    if isinstance(value, dict):
        if set(value) == {"$scale"}:
            options = value["$scale"]
            if scale not in options:
                raise ValueError(f"scaled value {options!r} has no entry for scale {scale!r}")
            return resolve_scale(options[scale], scale)
        return {k: resolve_scale(v, scale) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_scale(v, scale) for v in value]
    if isinstance(value, BaseModel):
        return resolve_scale(value.model_dump(mode="python"), scale)
    return value
