"""Where benchmarks put their results: ``<name>.json`` and ``<name>.md`` side by side, the table printed."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored


def write_report(name: str, result: dict, table: str, out_dir: Path = RESULTS) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{name}.md").write_text(table)
    print(table)
