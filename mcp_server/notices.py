"""Notices that ride on tool results: an agent must be told when the server replaced a damaged file.

A damaged ``config.json`` or ``state.json`` is set aside (``<name>.bad-<ts>``) and defaults take over
(``Workspace._set_aside``); that alone would be a silent change of what every tool acts on. The
workspace keeps a pending notice (in ``notices.json``, so a restarted server still tells), and this
module adds it to the results of the next tool calls: a text block first in ``content`` (what most
hosts show the model) and a ``notice`` key in ``structured_content``, errors included. The workspace
decides when a notice has been shown enough (``Workspace.notices_shown``). Notices are short: agent
context is precious.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent

from .workspace import Workspace

log = logging.getLogger(__name__)


def notice_text(texts: list[str]) -> str:
    return "NOTICE: " + " | ".join(texts)


def with_notice(result: CallToolResult, texts: list[str]) -> CallToolResult:
    """A copy of ``result`` that carries the notices."""
    text = notice_text(texts)
    structured: Any = result.structured_content
    if isinstance(structured, dict):
        structured = {"notice": text, **structured}
    return result.model_copy(update={"content": [TextContent(type="text", text=text), *result.content],
                                     "structured_content": structured})


def install(server: MCPServer, ws: Workspace) -> None:
    """Wrap ``server.call_tool`` (the one path every tools/call takes) so results carry pending notices."""
    ws.load_state()  # a damaged state.json is found (and set aside, with a notice) at start, not later
    original = server.call_tool

    async def call_tool(name: str, arguments: dict[str, Any], context=None):
        try:
            result = await original(name, arguments, context)
        except ToolError as err:
            texts = ws.pending_notices()
            if not texts or type(err) is not ToolError:  # unexpected errors keep their masked message
                raise
            ws.notices_shown(name)
            raise ToolError(f"{err}\n{notice_text(texts)}") from err
        texts = ws.pending_notices()
        if not texts or not isinstance(result, CallToolResult):
            return result
        ws.notices_shown(name)
        return with_notice(result, texts)

    server.call_tool = call_tool  # type: ignore[method-assign]
