"""Builds the MCP server: shared state (workspace, jobs, engine), tools, resources, prompts, lifespan.

``build_server(workspace)`` returns an ``MCPServer`` ready for ``run()`` (stdio), streamable HTTP, or
the in-process ``mcp.client.Client`` used by the tests. Its state is created eagerly (cheap: no torch)
so tools can close over it; the lifespan only shuts jobs down cleanly when the server stops.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

from .engine import Engine
from .jobs import Job, JobManager
from .playbook_job import PlaybookRuns
from .workspace import Workspace

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
Train, grow, evaluate, quantize and export BitTransformerLM, a language model that reads and writes text as
bits (8 data bits + 1 parity bit per byte). Typical flow: get_config -> patch_config({...}) -> train(steps=N)
-> get_job(job_id, wait_s=50) until active is false -> evaluate() / generate(prompt=...) -> export_int8().
Training runs as a background job (one at a time) that keeps running when this client disconnects; poll it with
get_job (compact; ask for detail once with include=[...]) and stop it with cancel_job (it saves a resumable
checkpoint; train(resume=<run or job id>) continues). All files live in the server's workspace; names, never
paths outside it, are accepted. playbook_list() / playbook_step(task_id) give the optimization playbook as
ordered tool calls with expected results; playbook_run(task_id or phase) runs and checks them itself, on a scratch
workspace (the user's config and model are untouched), and returns a PASS/FAIL table."""


class App:
    """Everything a tool needs: the workspace, the job manager and the (lazy) engine."""

    def __init__(self, workspace: str | Path, *, jobs_follow_session: bool = False):
        self.ws = Workspace(workspace)
        self.engine = Engine(self.ws)
        self.jobs = JobManager(self.ws, on_finish=self._on_finish, follow_session=jobs_follow_session)
        self.playbook_runs = PlaybookRuns(self.ws)  # playbook_run: recipes on scratch workspaces
        self.config_lock = threading.Lock()
        self._config_cache: tuple[float, Any] | None = None
        self.config()  # create config.json with defaults on first start

    def config(self):
        """The current RunConfig (re-read only when config.json changed)."""
        path = self.ws.config_path
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if self._config_cache is None or self._config_cache[0] != stamp or stamp is None:
            cfg = self.ws.load_config()
            self._config_cache = (path.stat().st_mtime_ns, cfg)
        return self._config_cache[1]

    def save_config(self, cfg) -> None:
        self.ws.save_config(cfg)
        self._config_cache = (self.ws.config_path.stat().st_mtime_ns, cfg)

    def _on_finish(self, job: Job) -> None:
        """A finished job's final checkpoint becomes the model evaluate/generate use."""
        ck = job.record.checkpoint
        if ck:
            self.ws.update_state(current_checkpoint=ck)


def build_server(workspace: str | Path = "bt_workspace", *, token: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000, log_level: str = "INFO", jobs_follow_session: bool | None = None) -> MCPServer:
    """The BitTransformerLM MCP server over ``workspace``; ``token`` enables bearer auth for HTTP.

    ``jobs_follow_session`` (default: env BT_JOBS_FOLLOW_SESSION=1): jobs stop when this server exits, instead
    of running on for the next server to re-attach.
    """
    from . import notices, prompts, resources
    from .auth import auth_kwargs
    from .tools import register_all
    from .tools.dashboard import build_apps, hide_app_only

    if jobs_follow_session is None:
        jobs_follow_session = os.environ.get("BT_JOBS_FOLLOW_SESSION") == "1"
    app = App(workspace, jobs_follow_session=jobs_follow_session)

    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[App]:
        try:
            yield app
        finally:
            import anyio

            # Jobs run on (the next server re-attaches), or with --jobs-follow-session stop at a step boundary.
            await anyio.to_thread.run_sync(app.jobs.shutdown)

    server = MCPServer(
        "bit-transformer",
        title="BitTransformerLM trainer",
        instructions=INSTRUCTIONS,
        version=_version(),
        lifespan=lifespan,
        log_level=log_level.upper(),  # type: ignore[arg-type]
        **auth_kwargs(token, host, port),
        extensions=[build_apps(app)],  # MCP Apps: the live dashboard (tools/dashboard.py)
        middleware=[hide_app_only],  # app-only tools stay out of a non-Apps client's (the model's) tool list
    )
    register_all(server, app)
    notices.install(server, app.ws)  # results tell the agent when a damaged config/state was replaced
    resources.register(server, app)
    prompts.register(server, app)
    from .tools.compact import finalize

    finalize(server)  # compact wire definitions of every tool (ours and the dashboard's): the context budget
    server.app_state = app  # type: ignore[attr-defined]  # for tests and the benchmark
    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("bit-transformer-mcp")
    except Exception:
        return "0"
