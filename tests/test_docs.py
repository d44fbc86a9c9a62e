"""README.md and docs/*.md stay true to the tree: every relative link resolves (file and #anchor), and every
command they show names a subcommand, flag, module or script that exists. Cheap (no command is run)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from tests.cli_parsers import parser_of

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _fences(text: str) -> list[str]:
    """The text outside code fences (links and headings) is what a reader clicks; code is checked separately."""
    return re.split(r"^```.*$", text, flags=re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not '-' or '_'), spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for i, part in enumerate(_fences(page.read_text())):
        if i % 2:
            continue
        for heading in re.findall(r"^#{1,6} (.+)$", part, flags=re.M):
            slug = _slug(heading)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {"README.md", "server.md", "playbook.md", "engine.md", "training.md", "cli.md",
            "benchmarks.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    bad = []
    for i, part in enumerate(_fences(page.read_text())):
        if i % 2:
            continue
        for target in LINK.findall(part):
            if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked here (no network)
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                bad.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                bad.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not bad, f"{page.name}: broken links:\n" + "\n".join(bad)


def _options(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.Action], dict[str, argparse.ArgumentParser]]:
    """Its flags (spelled with '_' for '-', as every CLI accepts both) and its subcommands."""
    flags, subs = {}, {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs.update(action.choices)
        flags.update((_norm(o), action) for o in action.option_strings)
    return flags, subs


def _norm(flag: str) -> str:
    return "--" + flag.lstrip("-").replace("-", "_").split("=")[0]


def _code_blocks(page: Path) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block, in order."""
    out, lang, body = [], None, []
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                out.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def _commands() -> list[tuple[str, list[str]]]:
    """(page, argv) for every line of every bash/sh/plain code block of every page."""
    out = []
    for page in PAGES:
        for lang, body in _code_blocks(page):
            if lang not in ("bash", "sh", ""):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    argv = shlex.split(line)
                except ValueError:
                    continue  # a JSON fragment or a table in a plain block
                out.append((page.name, argv))
    return out


def _tail(argv: list[str], *heads: tuple[str, ...]) -> list[str] | None:
    """The arguments after one of the given command heads: a program run first or by its path
    (`.venv/bin/bit-transformer`), or `-m <module>` anywhere (`torchrun ... -m bit_transformer`)."""
    for i, arg in enumerate(argv):
        for head in heads:
            if head[0] == "-m":
                if argv[i:i + 2] == list(head):
                    return argv[i + 2:]
            elif arg.rsplit("/", 1)[-1] == head[0] and (i == 0 or "/" in arg):
                return argv[i + 1:]
    return None


def _check(argv: list[str], parser: argparse.ArgumentParser, where: str) -> list[str]:
    """Walk argv as argparse would: flags (and their values), then a subcommand, then its own flags."""
    flags, subs = _options(parser)
    bad, k = [], 0
    while k < len(argv):
        arg = argv[k]
        k += 1
        if arg.startswith("--") and arg != "--":
            action = flags.get(_norm(arg))
            if action is None:
                bad.append(f"{where}: no flag {arg}")
                continue
            if "=" in arg or action.nargs == 0:
                continue
            while k < len(argv) and not argv[k].startswith("-"):  # its value(s)
                k += 1
                if action.nargs in (None, "?", 1):
                    break
        elif subs and not arg.startswith("-"):
            if arg not in subs:
                return [*bad, f"{where}: no subcommand {arg!r} (have {sorted(subs)})"]
            return bad + _check(argv[k:], subs[arg], f"{where} {arg}")
    return bad


def test_every_documented_command_exists(monkeypatch):
    from benchmarks.__main__ import main as bench_main
    from bit_transformer.cli import build_parser
    from mcp_server.__main__ import parse_args as server_args
    from playbook.__main__ import parse_args as playbook_args

    parsers = {
        "bit-transformer": build_parser()[0],
        "bit-transformer-mcp": parser_of(lambda: server_args([]), monkeypatch),
        "playbook": parser_of(lambda: playbook_args(["list"]), monkeypatch),
        "benchmarks": parser_of(lambda: bench_main([]), monkeypatch),
    }
    heads = {
        "bit-transformer": [("bit-transformer",), ("-m", "bit_transformer")],
        "bit-transformer-mcp": [("bit-transformer-mcp",), ("-m", "mcp_server")],
        "playbook": [("-m", "playbook")],
        "benchmarks": [("-m", "benchmarks")],
    }
    bad, seen = [], set()
    for page, argv in _commands():
        for name, hs in heads.items():
            tail = _tail(argv, *hs)
            if tail is not None:
                seen.add(name)
                bad += [f"{page}: {m}" for m in _check(tail, parsers[name], name)]
                break
        for k, arg in enumerate(argv):  # modules and scripts named on any command line
            if k and argv[k - 1] == "-m" and arg.startswith("benchmarks."):
                if importlib.util.find_spec(arg) is None:
                    bad.append(f"{page}: no module {arg}")
            elif re.fullmatch(r"(benchmarks|scripts)/[\w/]+\.(py|sh)", arg) and not (ROOT / arg).is_file():
                bad.append(f"{page}: no file {arg}")
    assert seen == set(heads), f"the docs show no command for {set(heads) - seen}"
    assert not bad, "commands in the docs that the code does not have:\n" + "\n".join(bad)


DOTTED = re.compile(r"`((?:bit_transformer|mcp_server|playbook|benchmarks)(?:\.[A-Za-z_]\w*)+)")


def _resolves(name: str) -> bool:
    """``a.b.c`` is a module, or an attribute of the longest importable module prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        obj = importlib.import_module(module)
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


# Short forms the docs use for engine names: `quantization.apply_qat`, `checkpoint.build_model`, ...
# (not the module names that are also config sections or result fields: `model.layers`, `plan.precision`, ...)
ENGINE = {p.stem for p in (ROOT / "bit_transformer").glob("*.py")} - {"__init__", "__main__", "model", "config",
                                                                     "plan", "data"}
SHORT = re.compile(r"`(" + "|".join(sorted(ENGINE)) + r")\.([A-Za-z_]\w*)(?![\w.])")
FILES = ("py", "json", "safetensors", "md", "png", "txt", "sh")


def test_every_dotted_api_name_exists():
    """`bit_transformer.data.builtin_text`, `quantization.apply_qat`, ...: each name the docs cite is importable."""
    names = {(page.name, name) for page in PAGES for name in DOTTED.findall(page.read_text())}
    names |= {(page.name, f"bit_transformer.{mod}.{attr}") for page in PAGES
              for mod, attr in SHORT.findall(page.read_text()) if attr not in FILES}
    bad = sorted(f"{page}: {name}" for page, name in names if not _resolves(name.rstrip(".")))
    assert not bad, "names in the docs that the code does not have:\n" + "\n".join(bad)


def test_the_readme_shows_what_ci_runs():
    """CI (.ci/run) runs "the README's test command" and main job: both must be in the README, as CI calls them."""
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    for command in ("bash scripts/test.sh", "bash scripts/main.sh"):
        assert command in ci, f".ci/run no longer calls {command!r}: update the README's Tests section with it"
        assert command in readme, f"README.md must show {command!r}, the command CI runs"
