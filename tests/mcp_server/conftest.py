"""Shared fixtures: tiny configs, an in-process client, and one trained workspace per test session."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

# Workers of these tests use one torch thread: the CI box has 2 cores shared by everything.
os.environ.setdefault("BT_TORCH_THREADS", "1")

TINY: dict[str, Any] = {
    "model": {"layers": 2, "d_model": 32, "nhead": 4, "max_seq_len": 72, "dropout": 0.0},
    "train": {"batch_size": 8, "eval_every": 3, "save_every": 3, "eval_batches": 2, "amp": "none",
              "lr": 3e-3, "safety": {"burn_in": 2}},
    "data": {"source": "builtin", "max_bytes": 8000},
}
TRAIN_STEPS = 6


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def structured(result) -> dict[str, Any]:
    assert not result.is_error, result.content[0].text if result.content else result
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error, f"expected an error, got {result.structured_content}"
    return result.content[0].text


async def call(client, name: str, args: dict[str, Any] | None = None, **kw) -> dict[str, Any]:
    return structured(await client.call_tool(name, args or {}, **kw))


def new_server(ws: Path):
    from mcp_server.app import build_server

    return build_server(ws)


async def tiny_workspace(ws: Path) -> None:
    from mcp.client import Client

    async with Client(new_server(ws)) as c:
        await call(c, "patch_config", {"patch": TINY})


@pytest.fixture
def tiny_ws(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    anyio.run(tiny_workspace, ws)
    return ws


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict[str, Any]:
    """One real training job (worker process) shared by the session; records what the job tests assert."""
    from mcp.client import Client

    ws = tmp_path_factory.mktemp("trained") / "ws"
    out: dict[str, Any] = {"ws": ws, "progress": []}

    async def run() -> None:
        async with Client(new_server(ws)) as c:
            await call(c, "patch_config", {"patch": TINY})
            started = await call(c, "train", {"steps": TRAIN_STEPS})
            out["started"] = started
            out["busy"] = await c.call_tool("train", {"steps": 2, "queue": False})

            async def progress(p, total, msg):
                out["progress"].append((p, total, msg))

            t0 = time.monotonic()
            view = started
            while view["active"] and time.monotonic() - t0 < 240:
                view = await call(c, "get_job", {"job_id": started["job_id"], "wait_s": 60},
                                  progress_callback=progress)
            out["polled"] = view  # compact
            out["final"] = await call(c, "get_job", {"job_id": started["job_id"], "include": ["all"],
                                                      "history": 1000})

    anyio.run(run)
    return out


@pytest.fixture
def trained_ws(trained, tmp_path: Path) -> Path:
    """A private copy of the trained workspace (tests may mutate it)."""
    dst = tmp_path / "ws"
    shutil.copytree(trained["ws"], dst, symlinks=True)
    return dst
