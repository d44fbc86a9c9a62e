"""The live training dashboard, an MCP App (``io.modelcontextprotocol/ui``).

``app.html`` is the whole app: one self-contained page (inline script and styles, SVG charts drawn by
the page itself, nothing loaded from the network) that speaks the MCP Apps protocol to its host over
``postMessage``. ``data.snapshot`` gathers what it shows; ``mcp_server.tools.dashboard`` binds both to
the ``dashboard`` tool (model-visible) and the ``dashboard_data`` tool (app-only, polled while a job runs).
"""

from __future__ import annotations

from importlib.resources import files

URI = "ui://bit-transformer/dashboard.html"


def html() -> str:
    """The app page, as shipped in the package (package-data)."""
    return files(__package__).joinpath("app.html").read_text(encoding="utf-8")
