"""Config patching: JSON merge patch (RFC 7386) over RunConfig, with agent-friendly extras and errors.

Extras on top of RFC 7386 (all optional, all reported back as normal changes):
- dotted keys: ``{"model.d_model": 64}`` is ``{"model": {"d_model": 64}}``;
- flat playbook flag names: a top-level key that is not a section is routed to the one section that
  owns that field, so ``{"layers": 8, "batch_size": 64, "amp": "bf16"}`` works like the playbook's flags;
- ``null`` removes a key, which resets that field to its default (RFC 7386 semantics).

An invalid patch changes nothing; the error lists every bad field with the reason and a fix.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import BaseModel, ValidationError

from bit_transformer.config import RunConfig


class PatchError(ValueError):
    """The patch cannot be applied; ``str()`` names every bad field and why."""


def _sections() -> dict[str, type[BaseModel]]:
    out = {}
    for name, field in RunConfig.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = ann
    return out


def field_owner() -> dict[str, str]:
    """Field name -> section, for names that exist in exactly one section."""
    seen: dict[str, list[str]] = {}
    for sec, model in _sections().items():
        for f in model.model_fields:
            seen.setdefault(f, []).append(sec)
    return {f: secs[0] for f, secs in seen.items() if len(secs) == 1}


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


def normalize_patch(patch: Any) -> tuple[dict[str, Any], list[str]]:
    """Expand dotted keys and route flat field names into their sections. Returns (patch, problems)."""
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

    for key, value in patch.items():
        if not isinstance(key, str) or not key:
            problems.append(f"{key!r}: keys must be non-empty strings")
            continue
        parts = key.split(".")
        head = parts[0]
        if head in sections:
            put(parts, value)
        elif head in owner:
            put([owner[head], *parts], value)
        else:
            valid = sorted(sections) + sorted(owner)
            close = difflib.get_close_matches(head, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; sections are {sorted(sections)}"
            problems.append(f"{key}: unknown field{hint}")
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
        fields = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(loc[-1], fields, n=1) if loc else []
        hint = f"did you mean {close[0]!r}?" if close else f"valid fields: {', '.join(fields)}"
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


def apply_patch(current: RunConfig, patch: Any) -> tuple[RunConfig, list[tuple[str, Any, Any]]]:
    """Validate ``patch`` over ``current``; return (new config, [(path, old, new)]). Raises PatchError."""
    normalized, problems = normalize_patch(patch)
    base = current.model_dump(mode="json")
    merged = merge_patch(base, normalized)
    try:
        new = RunConfig.model_validate(merged)
    except ValidationError as err:
        problems.append(validation_message(err))
        new = None
    if problems or new is None:
        raise PatchError("invalid patch, nothing was changed: " + "; ".join(problems))
    return new, diff(base, new.model_dump(mode="json"))


def diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON-like dicts as (dotted path, old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if old == new else [(prefix, old, new)]
