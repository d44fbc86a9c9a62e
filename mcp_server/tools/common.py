"""Shared tool plumbing: error translation (no stack traces to agents), annotations, shared argument types."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field, ValidationError

from ..config_ops import PatchError, validation_message
from ..engine import EngineError
from ..workspace import WorkspaceError

log = logging.getLogger("mcp_server.tools")

F = TypeVar("F", bound=Callable[..., Any])

# The wait argument of the tools that start or poll a job (train, get_job, playbook_run).
WaitS = Annotated[float, Field(ge=0, le=300, description="Seconds to wait for the end (<= 50: client timeouts)."
                               )]

EXPECTED = (ToolError, EngineError, WorkspaceError, PatchError)


def _translate(name: str, err: BaseException) -> ToolError:
    if isinstance(err, ToolError):
        return err
    if isinstance(err, EXPECTED):
        return ToolError(str(err))
    if isinstance(err, ValidationError):
        return ToolError(validation_message(err))
    if isinstance(err, ImportError):
        log.error("tool %s: engine module missing", name, exc_info=err)
        return ToolError(f"{name} is unavailable in this installation ({err}); the other tools still work")
    if isinstance(err, FileNotFoundError):
        return ToolError(f"{name}: {err}")
    if isinstance(err, ValueError):  # the engine's input checks raise ValueError with actionable text
        log.warning("tool %s: %s", name, err, exc_info=err)
        return ToolError(f"{name}: {err}")
    log.error("tool %s failed", name, exc_info=err)  # the full traceback stays in the server log (stderr)
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return ToolError(f"{name} failed: {type(err).__name__}{': ' + text[:400] if text else ''} "
                     "(details in the server log)")


def guarded(fn: F) -> F:
    """Turn every exception into a ToolError with an actionable message; log unexpected ones with traces."""
    name = fn.__name__
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except Exception as err:
                raise _translate(name, err) from err

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _translate(name, err) from err

    return wrapper  # type: ignore[return-value]


def read_only(title: str, *, open_world: bool = False) -> ToolAnnotations:
    """``open_world``: the tool may load the configured corpus, which for data.source='hf' can download."""
    return ToolAnnotations(title=title, read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                           open_world_hint=open_world)


def writes(title: str, *, destructive: bool, idempotent: bool = False, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(title=title, read_only_hint=False, destructive_hint=destructive,
                           idempotent_hint=idempotent, open_world_hint=open_world)
