"""``bit-transformer-mcp`` / ``python -m mcp_server``: run the MCP server over stdio (default) or HTTP.

stdout belongs to the MCP protocol under stdio, so every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from bit_transformer.cli_flags import FlagParser, spell

from .lifecycle import follow_session_from_env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(prog="bit-transformer-mcp", description=__doc__.splitlines()[0])
    p.add_argument(*spell("--workspace"), default=os.environ.get("BT_WORKSPACE", "bt_workspace"),
                   help="State directory: config, jobs, checkpoints, exports, data cache (env BT_WORKSPACE; "
                        "default ./bt_workspace).")
    p.add_argument(*spell("--http"), action="store_true", help="Serve streamable HTTP instead of stdio.")
    p.add_argument(*spell("--host"), default="127.0.0.1", help="HTTP bind address (default 127.0.0.1).")
    p.add_argument(*spell("--port"), type=int, default=8000, help="HTTP port (default 8000).")
    p.add_argument(*spell("--token"), default=os.environ.get("BT_MCP_TOKEN"),
                   help="HTTP bearer token; requests without it are refused (env BT_MCP_TOKEN).")
    p.add_argument(*spell("--jobs-follow-session"), action="store_true",
                   default=follow_session_from_env(),
                   help="Stop training jobs (with a checkpoint) when this server exits, as before; default: jobs "
                        "keep running and the next server on the workspace re-attaches (env BT_JOBS_FOLLOW_SESSION=1).")
    p.add_argument(*spell("--log-level"), default=os.environ.get("BT_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], type=str.upper)
    return p.parse_args(argv)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]  # before MCPServer: its basicConfig then adds nothing (and nothing on stdout)
    root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    log = logging.getLogger("mcp_server")
    if args.token and not args.http:
        log.warning("--token only applies to --http; stdio trusts the process that started the server")
    if args.http and args.host not in ("127.0.0.1", "localhost", "::1") and not args.token:
        log.warning("serving on %s without --token: anyone who can reach the port can train and export", args.host)
    from .app import build_server

    server = build_server(args.workspace, token=args.token if args.http else None, host=args.host, port=args.port,
                          log_level=args.log_level, jobs_follow_session=args.jobs_follow_session)
    log.info("workspace: %s", server.app_state.ws.root)
    if args.http:
        log.info("streamable HTTP on http://%s:%d/mcp%s", args.host, args.port, " (bearer token required)"
                 if args.token else "")
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
