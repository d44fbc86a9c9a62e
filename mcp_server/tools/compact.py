"""Compact wire format: results as compact JSON, and tool definitions a model can afford to read every turn.

``reply(view)`` returns a tool result whose structured content and text are the same compact JSON with
``None`` fields left out and non-finite floats written as strings ("nan"; the one place results do that).
``finalize(server)`` runs after every tool is registered: it strips docstring indentation from descriptions,
drops pydantic's per-property titles and string length caps from input schemas, and shrinks output schemas to
their top-level field names and JSON types (no nested ``$defs``): the result fields are named in each tool's
description, and the nested detail is documented there and in docs/server.md.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pydantic_core
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from ..budget import compact
from ..events import json_safe


def reply(view: BaseModel | dict[str, Any]) -> CallToolResult:
    data = dump(view) if isinstance(view, BaseModel) else _data(view)
    return CallToolResult(content=[TextContent(type="text", text=compact(data))], structured_content=data)


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON data of ``model`` without optional fields that are None (required ones stay, even when None)."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None and not field.is_required():
            continue
        out[field.alias or name] = _data(value)
    for name in type(model).model_computed_fields:
        value = getattr(model, name)
        if value is not None:
            out[name] = _data(value)
    for key, value in (model.__pydantic_extra__ or {}).items():
        if value is not None:
            out[key] = _data(value)
    return out


def _data(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return dump(value)
    if isinstance(value, list | tuple):
        return [_data(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _data(v) for k, v in value.items()}
    if isinstance(value, float):
        return json_safe(value)  # a diverged loss reads "nan" (the records keep real floats)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _data(dataclasses.asdict(value))
    return pydantic_core.to_jsonable_python(value)


def _json_type(schema: dict[str, Any], keep_null: bool = True) -> Any:
    """The JSON type(s) of a property schema; a $ref / nested model is just 'object'. Without ``keep_null``
    'null' is left out: results omit optional fields that are None instead of sending null."""
    if "$ref" in schema or "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "type" in schema:
        return schema["type"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            types: list[str] = []
            for sub in schema[key]:
                t = _json_type(sub)
                for x in t if isinstance(t, list) else [t]:
                    if x not in types and (keep_null or x != "null"):
                        types.append(x)
            return types[0] if len(types) == 1 else (types or "null")
    if "enum" in schema or "const" in schema:
        return "string"
    return "object"


def shrink_output(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """{"type": "object", "properties": {name: {"type": ...}}}: names and types only."""
    if not schema:
        return schema
    required = set(schema.get("required") or ())
    props = {name: {"type": _json_type(p, keep_null=name in required)}
             for name, p in (schema.get("properties") or {}).items()}
    return {"type": "object", "properties": props}  # 'required' left out: it would repeat most names


def _strip(node: Any) -> Any:
    """Without pydantic's titles and string length caps (guards the server checks; no real value nears them)."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items()
                if not (k == "title" and isinstance(v, str)) and not (k == "maxLength" and isinstance(v, int))}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _simplify_optional(prop: dict[str, Any]) -> dict[str, Any]:
    """{"anyOf": [{"type": "integer", ...}, {"type": "null"}]} -> {"type": "integer", ...} (null still accepted)."""
    options = prop.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return prop
    other = next(o for o in options if o != {"type": "null"})
    if not isinstance(other.get("type"), str) or set(other) - {"type", "minimum", "maximum", "exclusiveMinimum",
                                                               "exclusiveMaximum", "maxLength", "minLength"}:
        return prop
    out = {k: v for k, v in prop.items() if k != "anyOf"}
    out.update(other)  # an optional argument: omitting it is how a caller says 'none'
    return out


def shrink_input(schema: dict[str, Any]) -> dict[str, Any]:
    """No titles or string length caps, ``type: [X, "null"]`` instead of anyOf, and no ``default: null`` (optional
    says as much)."""
    schema = _strip(schema)
    props = schema.get("properties") or {}
    out = {}
    for name, prop in props.items():
        prop = _simplify_optional(prop)
        prop = {k: v for k, v in prop.items()
                if not (k == "default" and v is None) and not (k == "maximum" and v >= BIG)}
        out[name] = prop
    schema["properties"] = out
    return schema


BIG = 1_000_000  # bounds this large are checked by the server, not worth the model's attention

# The protocol's defaults for tool annotations: only differences go on the wire.
ANNOTATION_DEFAULTS = {"read_only_hint": False, "destructive_hint": True, "idempotent_hint": False,
                       "open_world_hint": True}


def shrink_annotations(ann: Any) -> Any:
    if ann is None:
        return ann
    changes = {k: None for k, default in ANNOTATION_DEFAULTS.items() if getattr(ann, k, None) == default}
    if ann.read_only_hint:  # destructive/idempotent only mean something for tools that write
        changes.update(destructive_hint=None, idempotent_hint=None)
    else:  # say it for every tool that writes: hosts ask before destructive calls
        changes.pop("destructive_hint", None)
    return ann.model_copy(update=changes)


def description(text: str) -> str:
    """A docstring as wire text: no indentation, paragraphs joined into single lines."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def finalize(server) -> None:
    """Compact every registered tool's wire definition (see the module docstring)."""
    for tool in server._tool_manager.list_tools():  # the SDK has no public hook for this
        if tool.description:
            tool.description = description(tool.description)
        tool.parameters = shrink_input(tool.parameters)
        tool.annotations = shrink_annotations(tool.annotations)
        schema = tool.output_schema
        if schema:
            tool.__dict__["output_schema"] = shrink_output(schema)  # a cached_property: set the cached value
