"""Small constructors that keep the recipe files readable (pure data, no I/O)."""

from __future__ import annotations

from typing import Any

from bit_transformer.config import PRE_RECIPE_DEFAULTS

from .model import Expect, Step, scaled

# The seed playbook was written for the defaults of its day (the flat model, classic block, dropout 0.1, AdamW,
# OneCycle, bf16); today's defaults are the small-budget CPU recipe (framed, modern, Muon, WSD, fp32), so the
# seed's recipes pin what the seed implied and override only what they set themselves.
SEED_MODEL: dict[str, Any] = dict(PRE_RECIPE_DEFAULTS["model"])
SEED_TRAIN: dict[str, Any] = dict(PRE_RECIPE_DEFAULTS["train"])

# Every DataConfig field but `source`/`max_bytes`, nulled: a merge patch then resets them to their defaults.
_DATA_DEFAULTS = ("paths", "hf_name", "hf_config", "hf_split", "text_field", "val_fraction", "hf_data_files")


def E(path: str, op: str = "==", value: Any = None, *, why: str = "", tol: float | None = None, each: bool = False,
      fix: str = "", key: bool = False) -> Expect:
    """An expectation: ``<path> <op> <value>``."""
    return Expect(path=path, op=op, value=value, why=why, tol=tol, each=each, fix=fix, key=key)


def reset(max_bytes: Any = None, *, data_cfg: dict[str, Any] | None = None) -> Step:
    """Start from the default config (model, train) on the given data (default: the first ``max_bytes`` of the
    built-in corpus), so a recipe does not depend on what ran before it."""
    nulls: dict[str, Any] = {k: None for k in _DATA_DEFAULTS}
    wanted = data_cfg if data_cfg is not None else {"source": "builtin", "max_bytes": max_bytes}
    if set(wanted) == {"$scale"}:  # a per-scale data choice: reset under each scale
        data: Any = {"$scale": {s: {**nulls, **v} for s, v in wanted["$scale"].items()}}
    else:
        data = {**nulls, **wanted}
    return Step(id="reset", tool="patch_config", args={"patch": {"model": None, "train": None, "data": data}},
                note="Reset model and train settings to their defaults (null = default) and pick the data.",
                expect=[E("applied", "==", True)])


def patch(step_id: str, body: dict[str, Any], *, expect: list[Expect] | None = None, note: str = "",
          dry_run: bool = False, precondition: bool = False) -> Step:
    args: dict[str, Any] = {"patch": body}
    if dry_run:
        args["dry_run"] = True
    return Step(id=step_id, tool="patch_config", args=args, expect=list(expect or []), note=note,
                precondition=precondition)


def call(step_id: str, tool: str, args: dict[str, Any] | None = None, *, expect: list[Expect] | None = None,
         note: str = "", precondition: bool = False) -> Step:
    return Step(id=step_id, tool=tool, args=dict(args or {}), expect=list(expect or []), note=note,
                precondition=precondition)


def train(step_id: str = "job", *, expect: list[Expect] | None = None, note: str = "", **args: Any) -> Step:
    """A training job: the runner (or agent) polls get_job until it ends; expectations read the final view."""
    return Step(id=step_id, tool="train", args=args, wait=True, expect=list(expect or []),
                note=note or "Start a training job; poll get_job(job_id, wait_s=50) until it ends, then "
                "get_job(job_id, **fetch) once for the checks.")


def completed(*more: Expect) -> list[Expect]:
    """The job finished normally and ran exactly its planned updates."""
    return [E("status", "==", "completed", why="the job ran to its end", key=True),
            E("result.updates_done", "==", "$.plan.total_updates", why="it ran exactly the planned updates"),
            *more]


def onecycle_end(cfg_step: str = "cfg") -> Expect:
    """OneCycle's last update uses its final LR (lr / 25 / 1e4) only when the horizon equals the real updates."""
    return E("last_step.lr", "~=", f"=$steps.{cfg_step}.config.train.lr / 25 / 1e4", tol=1e-3, key=True,
             why="the LR schedule ended exactly at the last optimizer update (horizon == real updates)")


__all__ = ["E", "call", "completed", "onecycle_end", "patch", "reset", "scaled", "train"]
