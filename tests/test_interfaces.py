"""Public interfaces pinned: every CLI's flags and every config field (issue 16: refactors keep them unchanged).

The tool contract agents see is pinned separately (tests/mcp_server/test_budget.py). A deliberate change here is
recorded by regenerating the snapshot:

    BT_UPDATE_INTERFACES=1 .venv/bin/python -m pytest tests/test_interfaces.py
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from tests.cli_parsers import parser_of

SNAPSHOT = Path(__file__).with_name("interfaces.json")
UPDATE = "BT_UPDATE_INTERFACES=1 .venv/bin/python -m pytest tests/test_interfaces.py"


def _flags(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """'<command path> <dest>' -> the option strings that reach it (positionals as their dest)."""
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_flags(sub, f"{prefix}{name} "))
        elif not isinstance(action, argparse._HelpAction):
            out[f"{prefix}{action.dest}"] = sorted(action.option_strings) or ["<positional>"]
    return out


def current(monkeypatch) -> dict:
    from bit_transformer.cli import build_parser
    from bit_transformer.config import RunConfig
    from mcp_server.__main__ import parse_args as server_args
    from playbook.__main__ import parse_args as playbook_args

    cli = {"bit-transformer": _flags(build_parser()[0]),
           "bit-transformer-mcp": _flags(parser_of(lambda: server_args([]), monkeypatch)),
           "python -m playbook": _flags(parser_of(lambda: playbook_args(["list"]), monkeypatch))}
    fields = {}
    for section, info in RunConfig.model_fields.items():
        model = info.annotation
        for name, f in getattr(model, "model_fields", {}).items():
            fields[f"{section}.{name}"] = {"type": str(f.annotation).replace("typing.", ""),
                                           "default": repr(f.get_default(call_default_factory=True))}
    return {"cli": cli, "config": fields}


def _diff(old, new, path=""):
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if k not in new:
                yield f"removed {path}{k}"
            elif k not in old:
                yield f"added {path}{k}"
            else:
                yield from _diff(old[k], new[k], f"{path}{k} / ")
    elif old != new:
        yield f"changed {path.rstrip(' /')}: {old!r} -> {new!r}"


def test_cli_flags_and_config_fields_match_the_snapshot(monkeypatch):
    now = current(monkeypatch)
    if os.environ.get("BT_UPDATE_INTERFACES") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        pytest.skip("interface snapshot written")
    changes = list(_diff(json.loads(SNAPSHOT.read_text()), now))
    assert not changes, ("a public interface changed:\n  " + "\n  ".join(changes)
                         + f"\nIf that is deliberate, regenerate the snapshot: {UPDATE}")


def test_the_snapshot_covers_every_entry_point():
    snap = json.loads(SNAPSHOT.read_text())
    assert {"train --batch_size", "train --resume", "evaluate --cache_dir"} <= {
        f"{k.split()[0]} {o}" for k, v in snap["cli"]["bit-transformer"].items() for o in v}
    assert "train.batch_size" in snap["config"] and "model.d_model" in snap["config"]
    assert len(snap["config"]) > 40
