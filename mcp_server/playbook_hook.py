"""The seam to the playbook package: the server serves its recipe *data* to agents.

Dependency direction: ``playbook -> (MCP protocol) -> mcp_server -> bit_transformer``. The server
only reads data from the playbook package, imported lazily; the playbook's runner talks to the
server over MCP like any agent. The package is expected to expose, at top level::

    list_recipes(scale: str = "smoke") -> list[Recipe | dict]   # in playbook order; each has at least
                                                                 # id, phase, title (and why, steps, ...)
    get_recipe(task_id: str, scale: str = "smoke") -> Recipe | dict   # raises KeyError/ValueError if unknown
    render_prompt(target: str, scale: str = "smoke") -> str     # optional: prompt text for a task id or
                                                                 # "phase-1" / "phase-2" / "all"
    brief_report(report: dict, budget=None, detail=False) -> dict   # a run report (``python -m playbook run
                                                                 # --report``) as a compact PASS/FAIL table

Anything missing is reported as a clear error (tools) or a generic text (prompts).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)


class PlaybookUnavailable(RuntimeError):
    pass


def _module():
    try:
        mod = importlib.import_module("playbook")
    except Exception as err:  # ImportError or a broken package: report, never crash the server
        raise PlaybookUnavailable(f"the playbook package cannot be imported ({type(err).__name__}: {err})") from err
    if not callable(getattr(mod, "list_recipes", None)) or not callable(getattr(mod, "get_recipe", None)):
        raise PlaybookUnavailable(
            "the installed playbook package is incomplete: it must provide list_recipes(scale) and "
            "get_recipe(task_id, scale) (reinstall the project: pip install -e .)"
        )
    return mod


def _data(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: _data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_data(v) for v in obj]
    return obj


def available() -> bool:
    try:
        _module()
        return True
    except PlaybookUnavailable:
        return False


def list_recipes(scale: str = "smoke") -> list[dict[str, Any]]:
    return [_data(r) for r in _module().list_recipes(scale)]


def export_recipes(scale: str = "smoke") -> list[dict[str, Any]]:
    """Every recipe in full (steps, arguments, expectations), in order."""
    return [_data(r) for r in _module().export_recipes(scale)]


def get_recipe(task_id: str, scale: str = "smoke") -> dict[str, Any]:
    mod = _module()
    try:
        return _data(mod.get_recipe(task_id, scale))
    except (KeyError, ValueError, LookupError) as err:
        ids = [str(r.get("id")) for r in list_recipes(scale)]
        raise ValueError(f"unknown playbook task {task_id!r} ({err}); tasks are {ids}") from err


def prompt_text(target: str, scale: str = "smoke") -> str | None:
    mod = _module()
    render = getattr(mod, "render_prompt", None)
    if callable(render):
        return str(render(target, scale))
    return None


def brief_report(report: dict[str, Any], *, budget: int | None = None, detail: bool = False) -> dict[str, Any]:
    """A ``python -m playbook run`` report as the compact PASS/FAIL table playbook_run returns."""
    brief = getattr(_module(), "brief_report", None)
    if not callable(brief):
        raise PlaybookUnavailable("the installed playbook package has no brief_report (reinstall: pip install -e .)")
    return brief(report, budget=budget, detail=detail)
