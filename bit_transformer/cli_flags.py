"""Command-line flags: the one rule for flag names and spellings, and the flags derived from the config.

Routing (``field_owner`` / ``route``): a config field is named ``section.field`` or, when only one section
has a field of that name, just ``field`` (``batch_size`` is ``train.batch_size``; nested models keep their
prefix: ``safety.decay``). The CLI's config flags and patch_config's flat keys (``mcp_server.config_ops``)
both use it. Every field of ``ModelConfig`` and ``TrainConfig`` is a bare flag (``--layers``,
``--accum_steps``), so the playbook's command lines work verbatim and a field added to the config later
gets its flag without touching the CLI; data fields are shown as ``--data.val_fraction``. Booleans take
``true``/``false`` as in the playbook (a bare ``--act`` means true); optional fields also take ``none``.

Spellings (``spell``, ``FlagParser``): every flag of every CLI takes snake_case (canonical, shown in help)
and kebab-case (``--cache_dir`` / ``--cache-dir``, ``--log_level`` / ``--log-level``).

Flags default to "not given", so only what the user typed overrides the base config (``--config
file.json`` or the defaults); the merged result is validated as one ``RunConfig``.
"""

from __future__ import annotations

import argparse
import copy
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .budget import parse_duration
from .config import RunConfig

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


# ------------------------------------------------------------------------------------------ spellings
SPELLING_NOTE = "Every flag is accepted in snake_case or kebab-case (e.g. --max_bytes or --max-bytes)."


def spell(*names: str) -> list[str]:
    """Option strings for one flag in both spellings, snake_case (canonical, shown in help) first.

    ``spell("--log-level")`` -> ``["--log_level", "--log-level"]``; short options (``-v``) pass through.
    Every CLI (bit-transformer, bit-transformer-mcp, python -m playbook) names its flags through this.
    Snake_case is canonical because most flags are config field names, which are snake_case.
    """
    out: list[str] = []
    for name in names:
        body = name[2:]
        forms = ["--" + body.replace("-", "_"), "--" + body.replace("_", "-")] if name.startswith("--") else [name]
        out += [f for f in dict.fromkeys(forms) if f not in out]
    return out


class FlagHelp(argparse.HelpFormatter):
    """Help that shows each flag once: its short options and its canonical (first) long spelling."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if len(longs) < 2:
            return super()._format_action_invocation(action)
        shown = copy.copy(action)
        shown.option_strings = [o for o in action.option_strings if not o.startswith("--")] + longs[:1]
        return super()._format_action_invocation(shown)


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser for flags named by ``spell``: one spelling in help, and an abbreviation that
    matches both spellings of one flag (``--log`` for ``--log_level``/``--log-level``) is not ambiguous."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", FlagHelp)
        kwargs.setdefault("epilog", SPELLING_NOTE)
        super().__init__(*args, **kwargs)

    def _get_option_tuples(self, option_string: str):
        found, seen = [], set()
        for option in super()._get_option_tuples(option_string):
            if id(option[0]) not in seen:  # option[0] is the action; its other spellings are the same flag
                seen.add(id(option[0]))
                found.append(option)
        return found


def parse_bool(text: str) -> bool:
    """argparse type for the playbook's ``true``/``false`` booleans."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _optional(inner):
    def parse(text: str):
        return None if text.strip().lower() in _NONE else inner(text)

    parse.__name__ = getattr(inner, "__name__", "value")
    return parse


def _split_optional(annotation) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _literal(values: tuple) -> Any:
    by_text = {str(v).lower(): v for v in values}

    def parse(text: str):
        key = text.strip().lower()
        if key not in by_text:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, values))}; got {text!r}")
        return by_text[key]

    parse.__name__ = "choice"
    return parse


def parse_duration_arg(text: str) -> float:
    """argparse type for durations (``--time_budget 15m``): seconds, or a number with s/m/h."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Fields whose flag reads more than their type: dest -> (argparse type, metavar).
FLAG_TYPES = {"train.time_budget": (parse_duration_arg, "DURATION")}


def _argument_kwargs(annotation) -> dict[str, Any] | None:
    """argparse keyword arguments for a field type; None for types the command line cannot express."""
    inner, optional = _split_optional(annotation)
    origin = typing.get_origin(inner)
    kw: dict[str, Any]
    if inner is bool:
        kw = {"type": parse_bool, "nargs": "?", "const": True, "metavar": "true|false"}
    elif origin is Literal:
        values = typing.get_args(inner)
        kw = {"type": _literal(values), "metavar": "{" + ",".join(map(str, values)) + "}"}
    elif inner in (int, float, str):
        kw = {"type": inner, "metavar": inner.__name__.upper()}
    elif origin is list and typing.get_args(inner) in ((str,), (int,), (float,)):
        item = typing.get_args(inner)[0]
        return {"type": item, "nargs": "+", "metavar": item.__name__.upper()}
    elif origin is tuple and len(set(typing.get_args(inner))) == 1 and typing.get_args(inner)[0] in (int, float):
        item = typing.get_args(inner)[0]  # a fixed-length tuple such as betas: --betas 0.9 0.95
        return {"type": item, "nargs": len(typing.get_args(inner)), "metavar": item.__name__.upper()}
    else:
        return None
    if optional:
        kw["type"] = _optional(kw["type"])
        kw["metavar"] += "|none"
    return kw


def _help(field, default_repr: str) -> str:
    text = (field.description or "").replace("%", "%%")
    return f"{text} (default: {default_repr})".strip()


# ------------------------------------------------------------------------------------------ routing
def config_sections(config: type[BaseModel] = RunConfig) -> dict[str, type[BaseModel]]:
    """The config's sections by name (RunConfig: model, train, data)."""
    return {name: f.annotation for name, f in config.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}


def field_owner(config: type[BaseModel] = RunConfig) -> dict[str, str]:
    """The routing rule for a name without its section: field name -> the one section that has it.

    ``batch_size`` -> train, ``layers`` -> model, ``max_bytes`` -> data; a nested model is one field
    (``safety`` -> train, so ``safety.decay`` means ``train.safety.decay``). A name two sections share
    routes nowhere and must be given with its section. The CLI's config flags and patch_config's flat keys
    both follow it (``route``), so a name means the same field in both.
    """
    seen: dict[str, list[str]] = {}
    for section, model in config_sections(config).items():
        for name in model.model_fields:
            seen.setdefault(name, []).append(section)
    return {name: sections[0] for name, sections in seen.items() if len(sections) == 1}


def route(name: str, config: type[BaseModel] = RunConfig) -> str | None:
    """The dotted config path a flag or patch key names (``section.field...`` as given, else via
    ``field_owner``); None when the rule routes it nowhere. Existence of the leaf is not checked."""
    head = name.split(".", 1)[0]
    if head in config_sections(config):
        return name
    owner = field_owner(config).get(head)
    return f"{owner}.{name}" if owner else None


def _leaf_fields(model: type[BaseModel], path: tuple[str, ...]):
    """(dotted path, field) for every leaf field of ``model``, recursing into nested models."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaf_fields(ann, (*path, name))
        else:
            yield ".".join((*path, name)), field


def config_flag_names(dest: str, config: type[BaseModel] = RunConfig) -> list[str]:
    """Every name ``route`` maps to ``dest``: the path without its section when the rule allows it, and the
    full dotted path (``batch_size``, ``train.batch_size``; ``safety.decay``, ``train.safety.decay``)."""
    section, rest = dest.split(".", 1)
    short = [rest] if field_owner(config).get(rest.split(".", 1)[0]) == section else []
    return [*short, dest]


# ------------------------------------------------------------------------------------------ config flags
BARE_SECTIONS = ("model", "train")  # their fields are the playbook's flags: --layers, --batch_size
# Data fields are shown as --data.<field> next to the --data shorthand; the bare names work as well.


def add_run_config_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """One flag per leaf field of RunConfig, named by the routing rule; returns canonical flag -> dest.

    Shown (canonical): model and train fields bare (``--layers``, ``--safety.decay``), data fields as
    ``--data.<field>``. Accepted too: every other name ``route`` maps to the field (``--model.layers``,
    ``--val_fraction``) and the kebab-case spelling of each (``--d-model``).
    """
    flags: dict[str, str] = {}
    for section, model in config_sections().items():
        prefix = "" if section in BARE_SECTIONS else f"{section}."
        group = parser.add_argument_group(f"{model.__name__} ({'--' + prefix + '*' if prefix else 'flags'})")
        for dest, field in _leaf_fields(model, (section,)):
            kw = _argument_kwargs(field.annotation)
            if kw is None:
                continue
            if dest in FLAG_TYPES:
                parse, metavar = FLAG_TYPES[dest]
                kw.update(type=_optional(parse), metavar=metavar + "|none")
            names = config_flag_names(dest)
            if section in BARE_SECTIONS and names[0] == dest:  # the playbook's bare flag would be lost
                raise ValueError(f"field {dest.split('.', 1)[1]!r} is in two config sections; rename one field")
            canonical = names[0] if section in BARE_SECTIONS else dest
            ordered = [canonical] + [n for n in names if n != canonical]
            default = field.get_default(call_default_factory=True)
            group.add_argument(*spell(*("--" + n for n in ordered)), dest=dest, default=argparse.SUPPRESS,
                               help=_help(field, repr(default)), **kw)
            flags["--" + canonical] = dest
    return flags


def data_spec(spec: list[str] | str) -> dict[str, Any]:
    """``--data`` shorthand -> DataConfig fields: ``builtin``, ``hf:name[:config]``, or file paths/globs."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if items == ["builtin"]:
        return {"source": "builtin", "paths": []}
    if len(items) == 1 and items[0].startswith("hf:"):
        name, _, config = items[0][3:].partition(":")
        if not name:
            raise ValueError("--data hf:NAME[:CONFIG] needs a dataset name, e.g. hf:wikitext:wikitext-2-raw-v1")
        return {"source": "hf", "hf_name": name, "hf_config": config or None}
    return {"source": "files", "paths": items}


def _set(tree: dict[str, Any], dest: str, value: Any) -> None:
    *parents, leaf = dest.split(".")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def build_run_config(args: argparse.Namespace, flags: dict[str, str], base: RunConfig | None = None) -> RunConfig:
    """Base config (``--config`` JSON, else ``base``, else defaults) + ``--data`` shorthand + every flag given."""
    base = base or RunConfig()
    config_path = getattr(args, "config", None)
    if config_path:
        base = RunConfig.model_validate(json.loads(Path(config_path).read_text(encoding="utf-8")))
    tree = base.model_dump()
    given = vars(args)
    if getattr(args, "data", None):
        tree["data"].update(data_spec(args.data))
    for dest in flags.values():
        if dest in given:
            _set(tree, dest, given[dest])
    return RunConfig.model_validate(tree)
