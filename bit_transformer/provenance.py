"""How a run was made: the command line or the tool calls that started each training of it (``provenance.json``).

Written by the Trainer once training really starts (``record``; a start that fails first leaves no record): the
CLI stores its argv (``shlex.join``), the MCP worker the tool calls that reproduce its job (a ``patch_config`` of the
config's differences from the defaults, then ``train``). A run resumed three times holds four invocations, oldest
first. The model card (``model_card.py``) reads it back, and takes the loss curve from each invocation's event log
(``metrics``: a path relative to the run directory).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

FILE = "provenance.json"
MAX_INVOCATIONS = 100  # a run resumed more often keeps its first and its newest ones


class ToolCall(BaseModel):
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Invocation(BaseModel):
    """One start of training on this run."""

    via: Literal["cli", "mcp"]
    at: float = Field(default_factory=time.time)
    command: str | None = Field(None, description="cli: the command line, shell-quoted.")
    tool_calls: list[ToolCall] = Field(default_factory=list, description="mcp: the calls that reproduce the job.")
    job: str | None = Field(None, description="mcp: the job id.")
    metrics: str | None = Field(None, description="Its event log (metrics.jsonl), relative to the run directory.")


class Provenance(BaseModel):
    invocations: list[Invocation] = Field(default_factory=list)


def read(run_dir: str | Path) -> Provenance:
    """The run's provenance; empty when it has none (a run trained before it was recorded) or it is unreadable."""
    path = Path(run_dir) / FILE
    try:
        return Provenance.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError, UnicodeDecodeError):
        return Provenance()


def record(run_dir: str | Path, invocation: Invocation) -> None:
    """Append ``invocation`` to the run's provenance (atomically replaced)."""
    from .checkpoint import write_text_atomic

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    calls = [*read(run).invocations, invocation]
    if len(calls) > MAX_INVOCATIONS:
        calls = calls[:1] + calls[-(MAX_INVOCATIONS - 1):]
    write_text_atomic(run / FILE, Provenance(invocations=calls).model_dump_json(indent=1, exclude_none=True))
