"""Tool registration, grouped by area."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer


def register_all(server: MCPServer, app) -> None:
    from . import config, hub, inspect, model, playbook, playbook_run, training

    for module in (config, training, model, hub, inspect, playbook, playbook_run):
        module.register(server, app)
