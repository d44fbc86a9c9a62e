"""One rule for flag names (issue 16): both spellings in every CLI; one routing rule for the CLI and patch_config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel

from bit_transformer.cli import build_parser
from bit_transformer.cli_flags import (
    build_run_config,
    config_flag_names,
    config_sections,
    field_owner,
    route,
    spell,
)
from mcp_server.__main__ import parse_args as server_args
from mcp_server.config_ops import normalize_patch
from playbook.__main__ import parse_args as playbook_args

SNAPSHOT = Path(__file__).with_name("interfaces.json")  # equal to the parsers (tests/test_interfaces.py)


def test_spell_gives_both_spellings_snake_case_first():
    assert spell("--log-level") == ["--log_level", "--log-level"]
    assert spell("--cache_dir") == ["--cache_dir", "--cache-dir"]
    assert spell("--verbose", "-v") == ["--verbose", "-v"]
    assert spell("--safety.burn_in") == ["--safety.burn_in", "--safety.burn-in"]


def test_every_flag_of_every_cli_takes_both_spellings():
    snap = json.loads(SNAPSHOT.read_text())["cli"]
    assert set(snap) == {"bit-transformer", "bit-transformer-mcp", "python -m playbook"}
    missing = [(cli, dest, o) for cli, flags in snap.items() for dest, options in flags.items()
               for o in options if o.startswith("--")
               for other in {o.replace("_", "-"), "--" + o[2:].replace("-", "_")} if other not in options]
    assert not missing


def _engine_args(argv: list[str]):
    return build_parser()[0].parse_args(argv)


@pytest.mark.parametrize(("parse", "argvs", "key", "value"), [
    (_engine_args, (["evaluate", "--checkpoint", "c", "--cache_dir", "d"],
                    ["evaluate", "--checkpoint", "c", "--cache-dir", "d"]), "cache_dir", "d"),
    (_engine_args, (["export-int8", "--checkpoint", "c", "--out", "o", "--eval_bytes", "9"],
                    ["export-int8", "--checkpoint", "c", "--out", "o", "--eval-bytes", "9"]), "eval_bytes", 9),
    (server_args, (["--log-level", "debug"], ["--log_level", "debug"], ["--log", "debug"]), "log_level", "DEBUG"),
    (server_args, (["--jobs-follow-session"], ["--jobs_follow_session"]), "jobs_follow_session", True),
    (playbook_args, (["run", "--poll-s", "3"], ["run", "--poll_s", "3"]), "poll_s", 3.0),
    (playbook_args, (["run", "--server-cmd", "x"], ["run", "--server_cmd", "x"]), "server_cmd", "x"),
])
def test_both_spellings_parse_to_the_same_value(parse, argvs, key, value):
    assert [getattr(parse(list(a)), key) for a in argvs] == [value] * len(argvs)


def test_help_shows_one_spelling():
    parser, _ = build_parser()
    text = parser._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "--cache_dir DIR" in text and "--cache-dir" not in text
    train = parser._subparsers._group_actions[0].choices["train"].format_help()
    assert "--d_model INT" in train and "--d-model" not in train and "--model.d_model" not in train
    assert "--data.val_fraction FLOAT" in train


def _train_config(argv: list[str]):
    parser, flags = build_parser()
    return build_run_config(parser.parse_args(["train", *argv]), flags)


@pytest.mark.parametrize(("names", "value", "path"), [
    (["batch_size", "batch-size", "train.batch_size"], "7", ("train", "batch_size", 7)),
    (["d_model", "model.d_model", "model.d-model"], "64", ("model", "d_model", 64)),
    (["data.val_fraction", "val_fraction", "val-fraction"], "0.25", ("data", "val_fraction", 0.25)),
    (["safety.burn_in", "train.safety.burn_in", "safety.burn-in"], "4", ("train", "safety", 4)),
])
def test_cli_flags_and_patch_keys_route_alike(names, value, path):
    section, field, want = path
    for name in names:
        cfg = _train_config([f"--{name}", value]).model_dump()
        got = cfg[section][field]["burn_in"] if field == "safety" else cfg[section][field]
        assert got == want, name
    for name in (n for n in names if "-" not in n):  # patch keys are field names, not flags
        patch, problems = normalize_patch({name: want})
        dest = route(name).split(".")
        node = patch
        for part in dest:
            node = node[part]
        assert problems == [] and node == want and dest[0] == section, name


def test_every_config_flag_name_is_a_patch_key_for_the_same_field():
    parser, _ = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    by_option = {o: a.dest for a in train._actions for o in a.option_strings}
    checked = 0
    for section, model in config_sections().items():
        for field in model.model_fields:
            sub = model.model_fields[field].annotation
            leaves = [f"{field}.{f}" for f in sub.model_fields] if isinstance(sub, type) and issubclass(
                sub, BaseModel) else [field]
            for leaf in leaves:
                dest = f"{section}.{leaf}"
                if f"--{dest}" not in by_option:  # types the command line cannot express (none today)
                    continue
                for name in config_flag_names(dest):
                    assert by_option[f"--{name}"] == dest == route(name), name
                    patch, problems = normalize_patch({name: 1})
                    assert problems == [] and _leaf_path(patch) == dest, name
                    checked += 1
    assert checked > 100  # model, train (with safety) and data fields, each bare and dotted


def _leaf_path(tree: dict) -> str:
    key, value = next(iter(tree.items()))
    return key if not isinstance(value, dict) else f"{key}.{_leaf_path(value)}"


def test_a_name_two_sections_share_routes_nowhere():
    class A(BaseModel):
        x: int = 0
        only_a: int = 0

    class B(BaseModel):
        x: int = 0

    class Config(BaseModel):
        a: A = A()
        b: B = B()

    assert field_owner(Config) == {"only_a": "a"}
    assert route("x", Config) is None and route("b.x", Config) == "b.x" and route("only_a", Config) == "a.only_a"
    assert config_flag_names("a.x", Config) == ["a.x"] and config_flag_names("a.only_a", Config) == [
        "only_a", "a.only_a"]
