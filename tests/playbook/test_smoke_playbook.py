"""The whole playbook at smoke scale through a real server over stdio (minutes: marked slow).

CI runs the same thing directly with `python -m playbook run --scale smoke`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_whole_playbook_is_green_at_smoke_scale(tmp_path):
    report_path = tmp_path / "report.json"
    out = subprocess.run([sys.executable, "-m", "playbook", "run", "--scale", "smoke", "--report", str(report_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert [r["id"] for r in report["recipes"]] == [str(i) for i in range(1, 13)] + ["sanity", "A", "B", "C"]
    assert all(r["status"] == "passed" and not r["override"] for r in report["recipes"])
    assert sum(len(s["checks"]) for r in report["recipes"] for s in r["steps"]) > 150
