"""The argparse parser an entry point builds, taken at its parse call (so no entry point needs a builder)."""

from __future__ import annotations

import argparse


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def parser_of(entry, monkeypatch) -> argparse.ArgumentParser:
    """Call ``entry()`` with parsing patched to hand back the parser (nothing after the parse runs)."""
    def grab(self, *args, **kwargs):
        raise _Captured(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    try:
        entry()
    except _Captured as got:
        return got.parser
    raise AssertionError(f"{entry} never parsed its arguments")
