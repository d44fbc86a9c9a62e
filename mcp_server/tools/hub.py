"""Hub tools: push_to_hub (a checkpoint with its model card) and pull_from_hub (a model into the workspace).

Both call ``bit_transformer.hub``, as the CLI's push/pull do. The token is the server's environment (HF_TOKEN) or
huggingface_hub's login cache: never an argument, never in a result or an error. A pulled model is written as the
checkpoint ``hub/<owner>--<name>`` (``runs/hub/checkpoints/``), so list_checkpoints, load_checkpoint, evaluate and
generate take it like any other.
"""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult
from pydantic import BaseModel, Field

from bit_transformer.hub import DEFAULT_EVAL_BYTES, folder_name

from .common import guarded, writes
from .compact import reply
from .model import Checkpoint

HUB_RUN = "hub"  # pulled models: runs/hub/checkpoints/<owner>--<name>

RepoId = Annotated[str, Field(max_length=96, description="owner/name")]


class PushView(BaseModel):
    url: str
    bpb: float | None = Field(None, description="The card's bits per byte on eval_bytes held-out bytes.")
    compressors: dict[str, float] | None = None
    note: str | None = Field(None, description="Why bpb was not measured.")


class PullView(BaseModel):
    name: str = Field(description="The checkpoint: 'hub/<owner>--<name>'.")
    params: int


def register(server: MCPServer, app) -> None:
    from bit_transformer import hub

    engine = app.engine

    @server.tool(annotations=writes("Push to the Hub", destructive=True, open_world=True))
    @guarded
    def push_to_hub(
        repo_id: RepoId,
        checkpoint: Checkpoint = None,
        private: bool = False,
        eval_bytes: Annotated[int, Field(ge=0, le=1_000_000)] = DEFAULT_EVAL_BYTES,
    ) -> Annotated[CallToolResult, PushView]:
        """Upload a checkpoint with a model card (bits/byte vs gzip/bzip2/xz, loss curve, the calls that trained
        it) to the Hub. Needs HF_TOKEN in the server's environment."""
        _, path = engine.resolve(checkpoint)
        try:
            out = hub.push_to_hub(path, repo_id, private=private, load_data=engine.corpus, eval_bytes=eval_bytes,
                                  lock=engine.lock)
        except hub.HubError as err:
            raise ToolError(str(err)) from err
        m = out.measured
        return reply(PushView(url=out.url, bpb=round(m.bits_per_byte, 4) if m else None,
                              compressors={k: round(v, 4) for k, v in m.compressors.items()} if m else None,
                              note=out.not_measured))

    @server.tool(annotations=writes("Pull from the Hub", destructive=True, idempotent=True, open_world=True))
    @guarded
    def pull_from_hub(repo_id: RepoId, revision: Annotated[str | None, Field(max_length=100)] = None
                      ) -> Annotated[CallToolResult, PullView]:
        """Download a pushed model as checkpoint 'hub/<owner>--<name>' (for load_checkpoint, evaluate); replaces an
        earlier pull. Private repos need HF_TOKEN."""
        name = f"{HUB_RUN}/{folder_name(repo_id)}"
        target = app.ws.checkpoint_path(name)
        try:
            with engine.lock:
                got = hub.pull(repo_id, target, revision=revision)
                engine.forget(target)
        except hub.HubError as err:
            raise ToolError(str(err)) from err
        return reply(PullView(name=name, params=got.params))
