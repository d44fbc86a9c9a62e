"""Tool registration, grouped by area."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer


def register_all(server: MCPServer, app) -> None:
    from . import config, inspect, model, playbook, training

    for module in (config, training, model, inspect, playbook):
        module.register(server, app)
