"""The dashboard in a real browser: the real server over streamable HTTP, the official MCP Apps host bridge
(``AppBridge``) in headless Chromium, and what a person sees while jobs train and get cancelled.

tests/browser/ holds the host page and the Playwright driver; this test installs their npm packages
(``npm ci``, from the committed lock) and bundles the host. It skips, saying why, only where no Chromium
can be found or installed. Everything is budgeted in optimizer updates; the waits are generous limits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp.client import Client

from .conftest import TINY, call

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "tests" / "browser"
# BT_DASHBOARD_FIGURE=1 trains a longer first job on Tiny Shakespeare (from ../shared/data) for the README's
# picture, with the same assertions: BT_DASHBOARD_FIGURE=1 BT_DASHBOARD_SCREENSHOT=docs/figures/dashboard.png
FIGURE = os.environ.get("BT_DASHBOARD_FIGURE") == "1"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
JOB1_UPDATES = 400 if FIGURE else 30
EVAL_EVERY = 20 if FIGURE else 5
JOB2_UPDATES = 1_000_000  # never finishes: the test cancels it from the dashboard
CONFIG = {**TINY, "train": {**TINY["train"], "eval_every": EVAL_EVERY, "save_every": 10}}
if FIGURE:
    CONFIG = {"model": {**TINY["model"], "d_model": 64, "max_seq_len": 144},
              "train": {**CONFIG["train"], "batch_size": 16, "save_every": 100},
              "data": {"source": "files", "paths": ["data/input.txt"], "max_bytes": None}}


def _chromium() -> str:
    """The system Chromium; installs Debian's package where we may (root with apt-get), else skips."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        if path := shutil.which("chromium"):
            return path
    pytest.skip("no Chromium: install Debian's `chromium` package (apt-get install chromium) to run the browser test")


def _node_deps() -> None:
    """npm ci (from the committed lock) when node_modules is missing or older than the lock; then bundle."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.fail("node and npm are needed to host the app (apt-get install nodejs npm)")
    stamp = BROWSER_DIR / "node_modules" / ".package-lock.json"
    if not stamp.is_file() or stamp.stat().st_mtime < (BROWSER_DIR / "package-lock.json").stat().st_mtime:
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True, timeout=600)
    subprocess.run(["node", "build.mjs"], cwd=BROWSER_DIR, check=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    """The browser, through tests/browser/driver.mjs (one JSON command and reply per line)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["node", str(BROWSER_DIR / "driver.mjs")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=BROWSER_DIR)

    def __call__(self, cmd: str, **args) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the browser driver exited (code {self.proc.poll()})"
        reply = json.loads(line)
        assert reply.pop("ok"), reply.get("error")
        return reply

    def wait(self, until: str, timeout_s: float = 180) -> dict:
        return self("wait", until=until, timeout_s=timeout_s)["r"]

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError, ValueError):
            self("quit")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def http_server(tmp_path):
    port = _free_port()
    if FIGURE:
        (tmp_path / "ws" / "data").mkdir(parents=True)
        shutil.copy(SHAKESPEARE, tmp_path / "ws" / "data" / "input.txt")
    env = {**os.environ, "BT_TORCH_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mcp_server", "--http", "--port", str(port), "--workspace",
                             str(tmp_path / "ws"), "--log-level", "WARNING"], env=env, cwd=ROOT)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, "the server exited during start-up"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def job_row(client, job_id: str) -> dict:
    """The server's own record of a job (the bt://jobs resource)."""
    rows = json.loads((await client.read_resource("bt://jobs")).contents[0].text)
    return next(r for r in rows if r["job_id"] == job_id)


async def count_events(client, job_id: str, kind: str) -> int:
    text = (await client.read_resource(f"bt://jobs/{job_id}/metrics")).contents[0].text
    return sum(json.loads(line)["event"] == kind for line in text.splitlines() if line.strip())


@pytest.mark.anyio
async def test_dashboard_in_chromium(http_server, tmp_path):
    chromium = _chromium()
    _node_deps()
    browser = Driver()
    try:
        async with Client(http_server, read_timeout_seconds=120) as c:
            await call(c, "patch_config", {"patch": CONFIG})
            job1 = (await call(c, "train", {"steps": JOB1_UPDATES}))["job_id"]

            # The host renders the app the dashboard tool points at; the model sees one short line.
            opened = browser("start", url=http_server, chromium=chromium)
            assert opened["uri"] == "ui://bit-transformer/dashboard.html"
            vis = {t["name"]: t["visibility"] for t in opened["tools"]}
            assert vis["dashboard"] == ["model", "app"] and vis["dashboard_data"] == ["app"]
            assert opened["text"].startswith(job1) and len(opened["text"]) < 300, opened["text"]

            # Live: each time the page shows an update count, the curve has exactly that many points.
            seen = []
            while True:
                r = browser.wait("r.update !== null && r.update > 0", timeout_s=180)
                assert r["job"] == job1 and r["points"] == r["update"] == r["lr_points"] == r["cp_points"], r
                seen.append(r["update"])
                if r["status"] == "completed":
                    break
                browser.wait(f"r.update > {r['update']} || r.status === 'completed'", timeout_s=180)

            # Finished: the status text says so and the curve holds every update of the job.
            row = await job_row(c, job1)
            assert row["status"] == "completed" and row["update"] == row["total_updates"] == JOB1_UPDATES, row
            assert r["status"] == "completed" and r["points"] == JOB1_UPDATES, r
            assert r["val_points"] == await count_events(c, job1, "eval") >= JOB1_UPDATES // EVAL_EVERY
            assert row["checkpoint"] in r["checkpoints"], (r["checkpoints"], row)
            assert r["cancel_enabled"] is False and r["resume_enabled"] is False and r["evaluate_enabled"] is True
            assert r["gate"] and r["telemetry"], r
            r = browser.wait("r.baselines.length === 3", timeout_s=120)  # gzip/bzip2/xz, computed once per corpus
            assert sorted(r["baselines"]) == ["bzip2", "gzip", "xz"]

            # Evaluate: the button calls evaluate() through the host; the page shows what the tool returns.
            browser("click", selector="#evaluate")
            r = browser.wait("r.eval !== null", timeout_s=180)
            ev = await call(c, "evaluate", {})
            assert r["eval"].startswith(f"{ev['bits_per_byte']:.3f} bits per byte"), (r["eval"], ev)

            # A finished run, as a picture (BT_DASHBOARD_SCREENSHOT=docs/figures/dashboard.png refreshes the README's).
            shot = Path(os.environ.get("BT_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
            browser("screenshot", path=str(shot))
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            # A second job: the dashboard follows it, and its Cancel button stops it.
            job2 = (await call(c, "train", {"steps": JOB2_UPDATES}))["job_id"]
            r = browser.wait(f"r.job === '{job2}' && r.status === 'running' && r.update >= 3 && r.cancel_enabled",
                             timeout_s=180)
            assert r["points"] == r["update"], r
            browser("click", selector="#cancel")
            r = browser.wait("r.status === 'cancelled'", timeout_s=180)
            row = await job_row(c, job2)
            assert row["status"] == "cancelled" and 0 < row["update"] < JOB2_UPDATES, row
            assert r["job"] == job2 and r["points"] == r["update"] == row["update"], r
            assert r["resume_enabled"] is True and r["cancel_enabled"] is False

            # Resume: a third job continues job 2's run from its checkpoint; the curve counts only its own updates.
            done2 = row["update"]
            browser("click", selector="#resume")
            r = browser.wait(f"r.job !== '{job2}' && r.status === 'running' && r.update >= {done2 + 2}",
                             timeout_s=180)
            job3 = r["job"]
            assert r["points"] == r["update"] - done2, r
            browser("click", selector="#cancel")
            r = browser.wait("r.status === 'cancelled'", timeout_s=180)
            row = await job_row(c, job3)
            assert row["status"] == "cancelled" and row["update"] == r["update"] > done2, (row, r)

            # Self-contained: the app itself requested nothing over the network (its CSP allows nothing).
            diag = browser("diagnostics")
            assert diag["appRequests"] == [], diag
    finally:
        browser.close()
