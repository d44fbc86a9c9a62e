"""The context budget: what an agent host puts into the model's context, measured in bytes of compact JSON.

Hosts send every tool definition (name, description, input and output schema) on every turn, and the text of
every tool result. These limits are enforced by tests (tests/mcp_server/test_budget.py) and measured by the
playbook runner's report.
"""

from __future__ import annotations

import json
from typing import Any

TOOLS_BUDGET = 24 * 1024  # tools/list, compact JSON, tools the model sees
RESULT_BUDGET = 2 * 1024  # one tool result with default arguments
HISTORY_CAP = 1000  # get_job(history=N): at most this many (downsampled) step points
EVALS_CAP = 200  # get_job(include=["evals"]): at most the newest this many evaluations


def compact(data: Any) -> str:
    """Compact JSON, the size unit of every budget."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=str)


def _dump(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    return obj


def app_only(tool: Any) -> bool:
    """A tool marked for the MCP App UI only (``_meta.ui.visibility == ["app"]``): hosts keep it from the model."""
    meta = getattr(tool, "meta", None) if not isinstance(tool, dict) else tool.get("_meta")
    ui = (meta or {}).get("ui") if isinstance(meta, dict) else None
    vis = ui.get("visibility") if isinstance(ui, dict) else None
    return isinstance(vis, list) and "model" not in vis and bool(vis)


def tools_bytes(tools: list[Any]) -> tuple[int, int]:
    """(all tools, model-visible tools) as compact JSON bytes of the tools/list ``tools`` array."""
    every = [_dump(t) for t in tools]
    visible = [d for t, d in zip(tools, every, strict=True) if not app_only(t)]
    return len(compact(every).encode()), len(compact(visible).encode())


def result_bytes(result: Any) -> int:
    """Bytes of one tool result as the model reads it: its structured content, or else its text blocks."""
    structured = getattr(result, "structured_content", None)
    if structured is not None:
        return len(compact(structured).encode())
    text = "".join(getattr(c, "text", "") or "" for c in (getattr(result, "content", None) or []))
    return len(text.encode())
