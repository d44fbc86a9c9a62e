"""Config patching: JSON merge patch (RFC 7386) over RunConfig, with agent-friendly extras and errors.

Extras on top of RFC 7386 (all optional, all reported back as normal changes):
- dotted keys: ``{"model.d_model": 64}`` is ``{"model": {"d_model": 64}}``;
- flat playbook flag names: a top-level key that is not a section is routed to the one section that
  owns that field (``bit_transformer.cli_flags.route``, the rule the CLI's flags follow), so
  ``{"layers": 8, "batch_size": 64, "amp": "bf16"}`` works like the playbook's flags;
- ``null`` removes a key, which resets that field to its default (RFC 7386 semantics);
- other trainers' names (``learning_rate``, ``max_steps``, ``n_layer``, ``block_size`` ...) are routed to our
  field of the same meaning (``ALIASES``); look-alikes of another meaning get a hint instead (``NOT_ALIASES``);
- the get_config result shape (``{"config": {...}, "derived": ..., "path": ...}``) and a ``{"config": ...}``
  wrapper are unwrapped, ignoring the derived facts.
Hints suggest a field only when its name is really similar and it takes a value of the given kind.

An invalid patch changes nothing; the error lists every bad field with the reason and a fix.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from bit_transformer.cli_flags import config_sections, field_owner
from bit_transformer.cli_flags import route as route_name
from bit_transformer.config import RunConfig


class PatchError(ValueError):
    """The patch cannot be applied; ``str()`` names every bad field and why."""


def _sections() -> dict[str, type[BaseModel]]:
    return config_sections(RunConfig)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Names other trainers use for our fields (same meaning, same unit): routed, with a note.
ALIASES: dict[str, str] = {
    "learning_rate": "train.lr", "lr_max": "train.lr", "max_lr": "train.lr",
    "max_steps": "train.steps", "num_steps": "train.steps", "total_steps": "train.steps", "train_steps": "train.steps",
    "max_iters": "train.steps", "num_train_steps": "train.steps", "iterations": "train.steps",
    "num_epochs": "train.epochs", "n_epochs": "train.epochs", "num_train_epochs": "train.epochs",
    "n_layer": "model.layers", "n_layers": "model.layers", "num_layers": "model.layers",
    "num_hidden_layers": "model.layers", "depth": "model.layers",
    "n_head": "model.nhead", "n_heads": "model.nhead", "num_heads": "model.nhead",
    "num_attention_heads": "model.nhead", "heads": "model.nhead",
    "n_embd": "model.d_model", "hidden_size": "model.d_model", "d_embed": "model.d_model", "embed_dim": "model.d_model",
    "n_inner": "model.dim_feedforward", "d_ff": "model.dim_feedforward", "ffn_dim": "model.dim_feedforward",
    "intermediate_size": "model.dim_feedforward", "dim_ff": "model.dim_feedforward",
    "block_size": "model.max_seq_len", "seq_len": "model.max_seq_len", "context_length": "model.max_seq_len",
    "max_position_embeddings": "model.max_seq_len", "n_ctx": "model.max_seq_len",
    "gradient_accumulation_steps": "train.accum_steps", "grad_accum_steps": "train.accum_steps",
    "grad_accum": "train.accum_steps", "accumulation_steps": "train.accum_steps",
    "max_grad_norm": "train.grad_clip", "clip_grad_norm": "train.grad_clip", "grad_norm_clip": "train.grad_clip",
    "eval_interval": "train.eval_every", "eval_steps": "train.eval_every",
    "save_interval": "train.save_every", "save_steps": "train.save_every", "checkpoint_every": "train.save_every",
    "lr_scheduler": "train.lr_schedule", "scheduler": "train.lr_schedule",
    "per_device_train_batch_size": "train.batch_size", "micro_batch_size": "train.batch_size",
    "dataloader_num_workers": "train.num_workers",
}
# Look-alikes of another meaning or unit: never routed, the hint says what to use instead.
NOT_ALIASES: dict[str, str] = {
    "warmup_steps": "train.warmup_frac is a fraction of the run's updates (e.g. 0.1), not a step count",
    "warmup_iters": "train.warmup_frac is a fraction of the run's updates (e.g. 0.1), not a step count",
    "dtype": "train.amp ('bf16' or 'none') sets the autocast precision",
    "precision": "train.amp ('bf16' or 'none') sets the autocast precision",
    "mixed_precision": "train.amp ('bf16' or 'none') sets the autocast precision",
    "vocab_size": "there is no vocabulary: the model reads 9 bits per byte",
    "tokenizer": "there is no tokenizer: the model reads 9 bits per byte",
    "max_tokens": "data.max_bytes limits the corpus; generate(max_bytes=N) limits generated text",
    "dataset": "data.source ('builtin', 'files' or 'hf') with data.paths or data.hf_name",
}
# Keys of the get_config / patch_config result that are not config: dropped when a result is sent back.
RESULT_KEYS = ("derived", "path", "changed", "applied", "notes", "next")
_GENERIC = {"max", "min", "num", "n", "use", "enable", "is", "total", "per", "size", "every"}


# The kinds a value or field can have, most specific first (bool before int: True is an int too).
_KINDS: tuple[tuple[str, type], ...] = (("bool", bool), ("int", int), ("float", float), ("str", str),
                                        ("list", list), ("object", dict))


def _kinds(annotation: Any) -> set[str]:
    """The JSON kinds a field accepts ('int', 'float', 'bool', 'str', 'list', 'object')."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {_value_kind(v) for v in typing.get_args(annotation)}
    if origin in (list, tuple, set):
        return {"list"}
    if origin is dict or annotation is dict:
        return {"object"}
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return {"object"}
        for kind, typ in _KINDS:
            if issubclass(annotation, typ):
                return {kind, "float"} if kind == "int" else {kind}
    return {"any"}


def _value_kind(value: Any) -> str:
    return next((kind for kind, typ in _KINDS if isinstance(value, typ)), "any")


def _similar(a: str, b: str) -> bool:
    """A typo of the same name, not a name that merely shares a prefix (max_steps is not max_bytes)."""
    if difflib.SequenceMatcher(None, a, b).ratio() >= 0.8:
        return True
    ta = [t for t in a.lower().split("_") if t and t not in _GENERIC]
    tb = [t for t in b.lower().split("_") if t and t not in _GENERIC]
    if not ta or not tb:
        return False
    return all(any(difflib.SequenceMatcher(None, x, y).ratio() >= 0.8 for y in tb) for x in ta) and \
        all(any(difflib.SequenceMatcher(None, y, x).ratio() >= 0.8 for x in ta) for y in tb)


def suggest(name: str, value: Any, candidates: dict[str, Any]) -> str | None:
    """The one candidate field (name -> annotation) that looks like ``name`` and takes a value of its kind."""
    alias = ALIASES.get(name)
    if alias is not None:
        return alias
    kind = _value_kind(value)
    fits = [c for c, ann in candidates.items() if _similar(name, c)
            and (kind == "any" or value is None or {kind, "any"} & _kinds(ann))]
    fits.sort(key=lambda c: -difflib.SequenceMatcher(None, name, c).ratio())
    return fits[0] if fits else None


def _all_fields() -> dict[str, Any]:
    """'section.field' -> annotation for every config field."""
    return {f"{sec}.{f}": info.annotation for sec, model in _sections().items()
            for f, info in model.model_fields.items()}


def unwrap(patch: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Accept the get_config / patch_config result shape and a {"config": ...} wrapper: the config inside."""
    sections = _sections()
    if isinstance(patch.get("config"), dict) and "config" not in sections:
        extra = [k for k in patch if k != "config"]
        dropped = [k for k in extra if k in RESULT_KEYS]
        unknown = [k for k in extra if k not in RESULT_KEYS]
        if unknown:
            raise PatchError(f"patch: a {{\"config\": ...}} wrapper holds the whole patch, but {unknown} sit beside "
                             "it; move them inside \"config\" (or send the sections without the wrapper)")
        notes.append("unwrapped {\"config\": ...}" + (f"; ignored the result's {', '.join(dropped)} (derived facts "
                                                       "are computed, not set)" if dropped else ""))
        return patch["config"]
    dropped = [k for k in RESULT_KEYS if k in patch and k not in sections]
    if dropped:
        notes.append(f"ignored {', '.join(dropped)} (result fields, not config)")
        return {k: v for k, v in patch.items() if k not in dropped}
    return patch


def normalize_patch(patch: Any, notes: list[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Expand dotted keys, route flat field names and aliases into their sections. Returns (patch, problems).

    ``notes`` (optional) receives what was reinterpreted: an unwrapped result shape, routed aliases.
    """
    notes = [] if notes is None else notes
    if isinstance(patch, str):
        try:
            patch = json.loads(patch)
        except ValueError as err:
            raise PatchError(
                f"patch: not valid JSON ({err}); pass an object like {{\"model\": {{\"d_model\": 64}}}}"
            ) from err
    if not isinstance(patch, dict):
        raise PatchError(
            f"patch: must be a JSON object, got {type(patch).__name__}; e.g. {{\"train\": {{\"batch_size\": 16}}}}"
        )
    patch = unwrap(patch, notes)
    sections = _sections()
    owner = field_owner()
    out: dict[str, Any] = {}
    problems: list[str] = []

    def put(path: list[str], value: Any) -> None:
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {} if nxt is None else nxt
            if not isinstance(nxt, dict):
                problems.append(f"{'.'.join(path)}: conflicts with a non-object value given for {part}")
                return
            node = nxt
        last = path[-1]
        if isinstance(node.get(last), dict) and isinstance(value, dict):
            node[last] = merge_patch(node[last], value)
        else:
            node[last] = value

    def alias_of(key: str, section: str | None) -> str | None:
        target = ALIASES.get(key)
        if target is None or (section is not None and not target.startswith(section + ".")):
            return None
        return target

    def route(key: str, value: Any) -> None:
        parts = key.split(".")
        head = parts[0]
        if head in sections:
            if len(parts) == 1 and isinstance(value, dict):  # aliases inside a section: {"train": {"max_steps": 5}}
                fixed = {}
                for k, v in value.items():
                    target = alias_of(k, head) if isinstance(k, str) else None
                    if target is not None and target.split(".")[1] not in value:
                        notes.append(f"{head}.{k} -> {target}")
                        fixed[target.split(".")[1]] = v
                    else:
                        fixed[k] = v
                value = fixed
            elif len(parts) == 2 and alias_of(parts[1], head):
                target = alias_of(parts[1], head)
                notes.append(f"{key} -> {target}")
                parts = target.split(".")
            put(parts, value)
        elif route_name(key) is not None:  # the engine's rule, the same as the CLI's flags
            put(route_name(key).split("."), value)
        elif len(parts) == 1 and head in ALIASES:
            target = ALIASES[head]
            notes.append(f"{head} -> {target}")
            put(target.split("."), value)
        elif head in NOT_ALIASES:
            problems.append(f"{key}: unknown field; {NOT_ALIASES[head]}")
        else:
            flat = {f.split(".", 1)[1]: a for f, a in _all_fields().items() if f.split(".", 1)[1] in owner}
            close = suggest(head, value if len(parts) == 1 else None, {**{s: dict for s in sections}, **flat})
            hint = (f"; did you mean {close!r}?" if close
                    else f"; give a section ({', '.join(sorted(sections))}) or a field name such as 'lr' or 'layers'")
            problems.append(f"{key}: unknown field{hint}")

    for key, value in patch.items():
        if not isinstance(key, str) or not key:
            problems.append(f"{key!r}: keys must be non-empty strings")
            continue
        route(key, value)
    return out, problems


def _describe_error(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    path = ".".join(loc) or "config"
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err.get("type") == "extra_forbidden":
        model: type[BaseModel] | None = RunConfig
        for part in loc[:-1]:
            ann = model.model_fields[part].annotation if model and part in model.model_fields else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        fields = {f: info.annotation for f, info in model.model_fields.items()} if model else {}
        name = loc[-1] if loc else ""
        close = suggest(name, err.get("input"), fields) if loc else None
        if close and "." in close:  # an alias of a field in another section
            close = None if close.split(".")[0] != (loc[-2] if len(loc) >= 2 else "") else close.split(".")[1]
        elsewhere = [f for f in _all_fields() if f.split(".", 1)[1] == name and f.split(".")[0] != ".".join(loc[:-1])]
        if name in NOT_ALIASES:
            hint = NOT_ALIASES[name]
        elif elsewhere:
            hint = f"{name} belongs to {elsewhere[0]}"
        elif close:
            hint = f"did you mean {close!r}?"
        else:
            hint = f"valid fields: {', '.join(sorted(fields))}"
        return f"{path}: unknown field; {hint}"
    if "input" in err and err.get("type") not in ("value_error", "assertion_error"):
        got = json.dumps(err["input"], default=str)
        if len(got) > 80:
            got = got[:77] + "..."
        return f"{path}: {msg} (got {got})"
    return f"{path}: {msg}"


def validation_message(err: ValidationError) -> str:
    lines = [_describe_error(e) for e in err.errors()]
    return "; ".join(dict.fromkeys(lines))


def apply_patch(current: RunConfig, patch: Any,
                notes: list[str] | None = None) -> tuple[RunConfig, list[tuple[str, Any, Any]]]:
    """Validate ``patch`` over ``current``; return (new config, [(path, old, new)]). Raises PatchError.

    ``notes`` (optional) receives how the patch was reinterpreted (aliases routed, a result shape unwrapped).
    """
    normalized, problems = normalize_patch(patch, notes)
    base = current.model_dump(mode="json")
    merged = merge_patch(base, normalized)
    try:
        new = RunConfig.model_validate(merged)
    except ValidationError as err:
        problems.append(validation_message(err))
        new = None
    if problems or new is None:
        raise PatchError("invalid patch, nothing was changed: " + "; ".join(problems))
    from bit_transformer.memory_limits import ModelTooLarge, check_fits

    try:
        check_fits(new, purpose="training")  # refuse what this machine cannot train (estimate vs. RAM/GPU)
    except ModelTooLarge as err:
        raise PatchError(f"invalid patch, nothing was changed: {err}") from err
    return new, diff(base, new.model_dump(mode="json"))


def diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON-like dicts as (dotted path, old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [(prefix, old, new)]


def choices(model: type[BaseModel] = RunConfig, prefix: str = "") -> dict[str, str]:
    """Allowed values of every enum (Literal) field, e.g. {"data.source": "builtin|files|hf"}: get_config shows
    them so an agent picks a valid value instead of learning it from an error."""
    import typing
    from types import UnionType

    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        options = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, UnionType) else (ann,)
        for option in options:
            if typing.get_origin(option) is typing.Literal:
                out[prefix + name] = "|".join(map(str, typing.get_args(option)))
            elif isinstance(option, type) and issubclass(option, BaseModel):
                out.update(choices(option, f"{prefix}{name}."))
    return out
