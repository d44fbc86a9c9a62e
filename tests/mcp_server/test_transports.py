"""Real transports with the real client: stdio subprocess (console script) and streamable HTTP with a bearer token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from .conftest import call, error_text

pytestmark = pytest.mark.anyio
SCRIPT = Path(sys.executable).with_name("bit-transformer-mcp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_stdio_console_script(tmp_path):
    """The console script over stdio; the workspace comes from BT_WORKSPACE."""
    command = str(SCRIPT) if SCRIPT.exists() else sys.executable
    args = [] if SCRIPT.exists() else ["-m", "mcp_server"]
    params = StdioServerParameters(command=command, args=args,
                                   env={"BT_WORKSPACE": str(tmp_path / "ws"), "BT_LOG_LEVEL": "WARNING"})
    async with Client(params, read_timeout_seconds=60) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"train", "get_job", "patch_config"} <= names
        cfg = await call(c, "get_config", {"derived": False})
        assert cfg["config"]["model"]["d_model"] == 128
        assert "nothing was changed" in error_text(await c.call_tool("patch_config", {"patch": {"x": 1}}))
    assert (tmp_path / "ws" / "config.json").is_file()


@pytest.fixture
def http_server(tmp_path):
    port = _free_port()
    token = "s3cret-token"
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_server", "--http", "--port", str(port), "--workspace", str(tmp_path / "ws"),
         "--log-level", "WARNING"],
        env={**os.environ, "BT_MCP_TOKEN": token}, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError as err:
            if proc.poll() is not None:
                raise RuntimeError((tmp_path / "server.log").read_text()) from err
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("HTTP server did not start")
    yield f"http://127.0.0.1:{port}/mcp", token
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _post(url: str, headers: dict[str, str]) -> int:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


async def test_http_requires_the_bearer_token(http_server):
    url, token = http_server
    assert _post(url, {}) == 401
    assert _post(url, {"Authorization": "Bearer wrong"}) == 401
    assert _post(url, {"Authorization": token}) == 401  # no scheme
    assert _post(url, {"Authorization": f"Bearer {token}"}) != 401
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with client, Client(streamable_http_client(url, http_client=client), read_timeout_seconds=60) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert "get_job" in names
        out = await call(c, "patch_config", {"patch": {"layers": 3}})
        assert out["changed"] == [{"path": "model.layers", "old": 4, "new": 3}]
    bare = create_mcp_http_client()
    with pytest.raises(Exception) as err:  # the SDK's HTTP error type for a 401
        async with bare, Client(streamable_http_client(url, http_client=bare), read_timeout_seconds=20) as c:
            await c.list_tools()
    assert "error response" in repr(err.value)  # the SDK's wording for the 401 above
