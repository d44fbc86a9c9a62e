"""Which result fields a step's expectations read, so each call asks for exactly the detail it needs.

Tool results are compact by default (the server's context budget); detail comes behind explicit arguments:
``get_job(job_id, include=[...], history=N)`` and ``patch_config(..., include_config=true)``. Resolving a recipe
computes, from its expectations (and later steps' ``$steps.<id>.<field>`` references), the one final
``get_job`` call of a training step (``Step.fetch``) and whether a config patch must return the whole config.
"""

from __future__ import annotations

import re
from typing import Any

from .model import Step

# get_job's detail sections (anything else a recipe reads is in the compact view).
JOB_SECTIONS = ("plan", "last_step", "evals", "data", "result", "request", "runtime", "checkpoints", "growth",
                "log_tail", "loader_len", "plateaus")
HISTORY_POINTS = 1000  # the server's documented cap for history=N
_HEAD = re.compile(r"^([A-Za-z_]\w*)")
_SELF = re.compile(r"\$\.([A-Za-z_]\w*)")


def _own_fields(step: Step) -> set[str]:
    names: set[str] = set()
    for e in step.expect:
        if not e.path.startswith("="):
            m = _HEAD.match(e.path)
            if m:
                names.add(m.group(1))
        for text in (e.path, e.value if isinstance(e.value, str) else ""):
            names |= set(_SELF.findall(text))
    return names


def _referenced_later(step: Step, steps: list[Step]) -> set[str]:
    pattern = re.compile(r"\$steps\." + re.escape(step.id) + r"\.([A-Za-z_]\w*)")
    names: set[str] = set()
    for s in steps:
        for e in s.expect:
            for text in (e.path, e.value if isinstance(e.value, str) else ""):
                names |= set(pattern.findall(text))
    return names


def fields_read(step: Step, steps: list[Step]) -> set[str]:
    """Top-level result fields of ``step`` that any expectation of the recipe reads."""
    return _own_fields(step) | _referenced_later(step, steps)


def job_fetch(step: Step, steps: list[Step]) -> dict[str, Any] | None:
    """The get_job arguments (besides job_id) of the final call whose result a training step's checks read."""
    names = fields_read(step, steps)
    include = [s for s in JOB_SECTIONS if s in names]
    out: dict[str, Any] = {}
    if include:
        out["include"] = include
    if "history" in names:
        out["history"] = HISTORY_POINTS
    return out or None


def add_detail(steps: list[Step]) -> None:
    """Set each training step's ``fetch`` and ask config patches for the config when a check reads it."""
    for step in steps:
        if step.wait:
            step.fetch = job_fetch(step, steps)
        elif step.tool == "patch_config" and "config" in fields_read(step, steps):
            step.args["include_config"] = True
