"""BitTransformerLM MCP server: typed tools over the engine, training as jobs in worker processes.

Entry points: ``bit-transformer-mcp`` / ``python -m mcp_server`` (see ``__main__.py``) and
``mcp_server.app.build_server(workspace)`` for embedding and tests. Importing this package is cheap
(no torch); the engine is imported when a tool first needs it.
"""
