"""Prompts: one per playbook phase and task (texts from the playbook package when it provides them)."""

from __future__ import annotations

import contextlib
import logging

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts import Prompt

from . import playbook_hook as hook

log = logging.getLogger(__name__)

SCALES = ("smoke", "full")
POLL_ADVICE = ("poll get_job(job_id, wait_s=50) (compact: progress, ETA, latest step and eval) until `active` is "
               "false, then call get_job(job_id, **fetch) once with the step's `fetch` arguments")

HOW_TO = """\
How to execute a recipe with this server's tools:
1. Call playbook_step(task_id="{task}", scale="{scale}") to get the recipe: preconditions and ordered steps.
2. For each step, call the named tool with exactly the given arguments. For train, """ + POLL_ADVICE + """.
3. Check every expectation (field, comparison, value) against the tool's structured result. Report each as
   PASS/FAIL with the measured value. Stop the recipe at the first failed precondition and say why.
4. Summarize: the recipe id, pass/fail per expectation, and anything surprising (e.g. a `reason` field)."""

PHASES = {
    "1": "Phase 1 (tasks 1-12, then the sanity fit): checks that each training-loop and runtime optimization is "
         "present and works, and that a small model really learns.",
    "2": "Phase 2 (tasks A, B, C): the training recipes with the playbook's exact hyperparameters, each validated.",
}


def check_scale(scale: str) -> str:
    """An unknown scale is an error naming the valid ones (never a silently different template)."""
    if scale not in SCALES:
        from mcp.shared.exceptions import MCPError
        from mcp.types import INVALID_PARAMS

        raise MCPError(INVALID_PARAMS, f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    return scale


def _text(target: str, scale: str, fallback: str) -> str:
    check_scale(scale)
    try:
        text = hook.prompt_text(target, scale)
    except Exception as err:  # the playbook may be absent or broken: the generic text still helps
        log.debug("playbook prompt for %s unavailable: %s", target, err)
        text = None
    return text or fallback


def _phase_prompt(phase: str):
    def fn(scale: str = "smoke") -> str:
        ids = []
        with contextlib.suppress(Exception):  # no playbook yet: the generic order text below
            ids = [str(r.get("id")) for r in hook.list_recipes(scale) if str(r.get("phase")) == phase]
        order = ", ".join(ids) if ids else "as listed by playbook_list()"
        fallback = (f"Run the BitTransformerLM playbook {PHASES[phase]}\nCall playbook_list(scale=\"{scale}\") and run "
                    f"the phase {phase} recipes top to bottom in this order: {order}.\n\n"
                    + HOW_TO.format(task="<id>", scale=scale))
        return _text(f"phase-{phase}", scale, fallback)

    fn.__name__ = f"playbook_phase_{phase}"
    return fn


def _task_prompt(task_id: str, title: str):
    def fn(scale: str = "smoke") -> str:
        fallback = f"Run playbook task {task_id}: {title}.\n\n" + HOW_TO.format(task=task_id, scale=scale)
        return _text(task_id, scale, fallback)

    fn.__name__ = f"playbook_task_{task_id}"
    return fn


def register(server: MCPServer, app) -> None:
    def run_playbook(scale: str = "smoke") -> str:
        """Execute the whole playbook (Phase 1 then Phase 2) through this server's tools."""
        fallback = ("Run the BitTransformerLM playbook top to bottom: Phase 1 tasks 1-12 and the sanity fit, then "
                    "Phase 2 tasks A, B, C. "
                    f"Call playbook_list(scale=\"{scale}\") for the order.\n\n"
                    + HOW_TO.format(task="<id>", scale=scale))
        return _text("all", scale, fallback)

    server.add_prompt(Prompt.from_function(run_playbook, name="run_playbook", title="Run the whole playbook"))
    for phase, desc in PHASES.items():
        server.add_prompt(Prompt.from_function(_phase_prompt(phase), name=f"playbook_phase_{phase}",
                                               title=f"Playbook phase {phase}", description=desc))
    try:
        recipes = hook.list_recipes("smoke")
    except Exception as err:
        log.info("playbook not available; per-task prompts not registered (%s)", err)
        return
    for r in recipes:
        task_id = str(r.get("id"))
        title = str(r.get("title") or task_id)
        server.add_prompt(Prompt.from_function(_task_prompt(task_id, title), name=f"playbook_task_{task_id}",
                                               title=f"Playbook task {task_id}: {title}"[:120],
                                               description=str(r.get("why") or title)[:500]))
