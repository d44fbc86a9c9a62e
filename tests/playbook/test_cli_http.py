"""`python -m playbook` over streamable HTTP with a bearer token, and its read-only subcommands."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def playbook(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_with_token(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "mcp_server", "--http", "--port", str(port), "--token", "s3cret",
                               "--workspace", str(tmp_path / "ws")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        ok = playbook("run", "--url", url, "--token", "s3cret", "--task", "12", "--report", str(tmp_path / "r.json"))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "12   | PASS" in ok.stdout and json.loads((tmp_path / "r.json").read_text())["ok"] is True
        bad = playbook("run", "--url", url, "--token", "wrong", "--task", "12", "--report", str(tmp_path / "b.json"))
        assert bad.returncode == 1 and "could not run the playbook" in bad.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_read_only_subcommands():
    listed = playbook("list", timeout=60)
    assert listed.returncode == 0 and listed.stdout.splitlines()[0].startswith("  1  phase 1")
    shown = playbook("show", "c", "--scale", "full", timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == "C"
    prompt = playbook("prompt", "phase-1", timeout=60)
    assert prompt.returncode == 0 and "playbook_step" in prompt.stdout
    unknown = playbook("show", "Z", timeout=60)
    assert unknown.returncode == 2 and "tasks are 1, 2" in unknown.stderr
