"""`python -m playbook run` over stdio, with a deliberately broken optimization in the server's training worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A plausible regression of task 6: someone "simplifies" the cosine compression ramp to a linear one. Installed as
# sitecustomize, it is active in every process the run starts (CLI, MCP server, training worker) and nowhere else.
LINEAR_RAMP = '''
import bit_transformer.schedule as _c

def _linear_ramp(step, start, end, total_steps):
    if total_steps <= 0 or step >= total_steps:
        return float(end)
    if step <= 0:
        return float(start)
    return float(start + (end - start) * step / total_steps)

_c.cosine_ramp = _linear_ramp
'''


def playbook(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "playbook", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_broken_compression_ramp_fails_exactly_its_check_over_stdio(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(LINEAR_RAMP)
    path = os.pathsep.join(p for p in (str(tmp_path / "site"), os.environ.get("PYTHONPATH")) if p)
    report_path = tmp_path / "report.json"
    out = playbook("run", "--task", "6", "--task", "12", "--workspace", str(tmp_path / "ws"), "--report",
                   str(report_path), "--poll-s", "5", env={"PYTHONPATH": path})
    assert out.returncode == 1, out.stdout + out.stderr
    report = json.loads(report_path.read_text())
    assert {r["id"]: r["status"] for r in report["recipes"]} == {"6": "failed", "12": "passed"}, out.stdout
    failed = [c["path"] for r in report["recipes"] for s in r["steps"] for c in s["checks"] if not c["ok"]]
    assert failed == ["history[update=2].compress_prob", "history[update=4].compress_prob"]
    by_path = {c["path"]: c for s in report["recipes"][0]["steps"] for c in s["checks"]}
    assert by_path["history[update=2].compress_prob"]["measured"] == pytest.approx(0.125)  # linear: 0.5 * 1/4
    assert by_path["history[update=2].compress_prob"]["expected"] == pytest.approx(0.0732, abs=1e-4)  # cosine
    assert "FAIL" in out.stdout and "!! job: history[update=2].compress_prob ~=" in out.stdout
    assert "task 6: Compression probability" in out.stderr  # progress lines go to stderr
