"""Command-line flags derived from the pydantic run config.

Every field of ``ModelConfig`` and ``TrainConfig`` becomes a flag of the same name (``--layers``,
``--d_model``, ``--accum_steps``, ...), so the playbook's command lines work verbatim and a field added
to the config later gets its flag without touching the CLI. Nested models and the data config get a
dotted prefix (``--safety.decay``, ``--data.val_fraction``). Booleans take ``true``/``false`` as in the
playbook (a bare ``--act`` means true); optional fields also take ``none``.

Flags default to "not given", so only what the user typed overrides the base config (``--config
file.json`` or the defaults); the merged result is validated as one ``RunConfig``.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


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
    else:
        return None
    if optional:
        kw["type"] = _optional(kw["type"])
        kw["metavar"] += "|none"
    return kw


def _help(field, default_repr: str) -> str:
    text = (field.description or "").replace("%", "%%")
    return f"{text} (default: {default_repr})".strip()


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], path: tuple[str, ...], prefix: str = "",
                    seen: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Add one flag per field of ``model`` (recursing into nested models); returns flag -> dest."""
    seen = {} if seen is None else seen
    group = parser.add_argument_group(f"{model.__name__} ({'--' + prefix + '*' if prefix else 'flags'})")
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            add_model_flags(parser, annotation, (*path, name), f"{prefix}{name}.", seen)
            continue
        kw = _argument_kwargs(annotation)
        if kw is None:
            continue
        flag = f"--{prefix}{name}"
        dest = ".".join((*path, name))
        if flag in seen:  # two config fields with one flag name would silently shadow each other
            raise ValueError(f"flag {flag} would set both {seen[flag]} and {dest}; rename one field")
        seen[flag] = dest
        default = field.get_default(call_default_factory=True)
        group.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=_help(field, repr(default)), **kw)
    return seen


def add_run_config_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """All RunConfig flags: model and train fields bare, data fields as ``--data.<field>``."""
    seen: dict[str, str] = {}
    add_model_flags(parser, ModelConfig, ("model",), seen=seen)
    add_model_flags(parser, TrainConfig, ("train",), seen=seen)
    add_model_flags(parser, DataConfig, ("data",), "data.", seen=seen)
    return seen


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
