"""The expectation engine: field paths, references, safe expressions and comparisons.

Pure Python (no mcp, no torch), so the runner, the tests and anyone reading a recipe get the same
semantics. ``check(expect, result, steps)`` returns an :class:`Outcome` with the measured value.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import re
from typing import Any

from pydantic import BaseModel

from .model import Expect

_SEGMENT = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")
_REF = re.compile(r"\$(steps\.[A-Za-z_][\w]*|)((?:\.[A-Za-z_][\w]*|\[[^\]]*\])*)")
_MISSING = object()


class PathError(LookupError):
    """A path that does not exist in the data; the message names the segment and what is there."""


class ExprError(ValueError):
    """An expression that cannot be evaluated (bad syntax, forbidden construct, missing reference)."""


class Outcome(BaseModel):
    ok: bool
    measured: Any = None
    expected: Any = None
    detail: str = ""


# ---------------------------------------------------------------------------------------------------- paths
def _segments(path: str) -> list[str | tuple[str]]:
    """'a.b[0].c[*]' -> ['a', 'b', ('0',), 'c', ('*',)] (bracket contents as 1-tuples)."""
    out: list[str | tuple[str]] = []
    pos = 0
    text = path.strip()
    while pos < len(text):
        if text[pos] == ".":
            pos += 1
            continue
        m = _SEGMENT.match(text, pos)
        if m is None:
            raise PathError(f"bad path {path!r} at position {pos}")
        out.append(m.group(1) if m.group(1) is not None else (m.group(2).strip(),))
        pos = m.end()
    return out


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def lookup(data: Any, path: str) -> Any:
    """The value at ``path`` in ``data``; ``[*]`` maps the rest of the path over a list. Raises PathError."""
    segs = _segments(path)
    return _walk(data, segs, "")


def _walk(node: Any, segs: list, where: str) -> Any:
    for i, seg in enumerate(segs):
        if isinstance(seg, tuple):
            sel = seg[0]
            if not isinstance(node, list):
                raise PathError(f"{where or 'result'} is not a list (got {type(node).__name__}), cannot index [{sel}]")
            if sel == "*":
                return [_walk(item, segs[i + 1:], f"{where}[{k}]") for k, item in enumerate(node)]
            if re.fullmatch(r"-?\d*:-?\d*", sel):  # a slice: the rest of the path maps over its items
                a, b = (int(x) if x else None for x in sel.split(":"))
                return [_walk(item, segs[i + 1:], f"{where}[{sel}]") for item in node[a:b]]
            if re.fullmatch(r"-?\d+", sel):
                k = int(sel)
                if not -len(node) <= k < len(node):
                    raise PathError(f"{where or 'result'} has {len(node)} items; index [{k}] is out of range")
                node, where = node[k], f"{where}[{k}]"
                continue
            if "=" in sel:
                key, _, raw = sel.partition("=")
                want = _literal(raw.strip())
                found = [x for x in node if isinstance(x, dict) and _same(x.get(key.strip(), _MISSING), want)]
                if not found:
                    raise PathError(f"no item of {where or 'result'} has {key.strip()} == {want!r}")
                node, where = found[0], f"{where}[{sel}]"
                continue
            raise PathError(f"bad selector [{sel}] (use an index, * or key=value)")
        if not isinstance(node, dict):
            raise PathError(f"{where or 'result'} is {_short(node)}, not an object: no field {seg!r}")
        if seg not in node:
            keys = ", ".join(sorted(map(str, node))[:20])
            raise PathError(f"no field {seg!r} in {where or 'result'} (fields: {keys})")
        node, where = node[seg], f"{where}.{seg}" if where else seg
    return node


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


# ---------------------------------------------------------------------------------------------- references
def resolve_ref(ref: str, current: Any, steps: dict[str, Any]) -> Any:
    """'$steps.<id>.<path>' or '$.<path>' (this result) -> value. Raises PathError."""
    m = _REF.fullmatch(ref.strip())
    if m is None:
        raise PathError(f"bad reference {ref!r}: use '$steps.<step id>.<path>' or '$.<path>'")
    head, rest = m.group(1), m.group(2)
    if head:
        step_id = head.split(".", 1)[1]
        if step_id not in steps:
            raise PathError(f"reference {ref!r}: no earlier step {step_id!r} (steps so far: {', '.join(steps)})")
        base = steps[step_id]
    else:
        base = current
    return lookup(base, rest) if rest else base


_FUNCS: dict[str, Any] = {
    "ceil": math.ceil, "floor": math.floor, "round": round, "min": min, "max": max, "abs": abs,
    "sqrt": math.sqrt, "log": math.log, "log2": math.log2, "cos": math.cos, "sin": math.sin, "len": len,
}
_CONSTS: dict[str, Any] = {"pi": math.pi, "true": True, "false": False, "null": None, "True": True,
                           "False": False, "None": None}
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name, ast.Load,
            ast.Constant, ast.IfExp, ast.List, ast.Tuple, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv,
            ast.Mod, ast.Pow, ast.USub, ast.UAdd, ast.Not, ast.And, ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE,
            ast.Gt, ast.GtE, ast.In, ast.NotIn)


def evaluate(expr: str, current: Any, steps: dict[str, Any]) -> Any:
    """Evaluate an '=expression' (leading '=' optional) with references bound. Raises ExprError/PathError."""
    text = expr[1:] if expr.startswith("=") else expr
    env: dict[str, Any] = {}

    def bind(m: re.Match) -> str:
        name = f"_r{len(env)}"
        env[name] = resolve_ref(m.group(0), current, steps)
        return name

    source = _REF.sub(bind, text)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as err:
        raise ExprError(f"bad expression {expr!r}: {err.msg}") from err
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExprError(f"bad expression {expr!r}: {type(node).__name__} is not allowed")
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _FUNCS):
            raise ExprError(f"bad expression {expr!r}: only {', '.join(_FUNCS)} may be called")
        if isinstance(node, ast.Name) and node.id not in env and node.id not in _FUNCS and node.id not in _CONSTS:
            raise ExprError(f"bad expression {expr!r}: unknown name {node.id!r}")
    try:
        return eval(compile(tree, "<expect>", "eval"), {"__builtins__": {}}, {**_FUNCS, **_CONSTS, **env})
    except Exception as err:  # arithmetic on None, division by zero...
        raise ExprError(f"expression {expr!r} failed: {type(err).__name__}: {err}") from err


def value_of(spec: Any, current: Any, steps: dict[str, Any]) -> Any:
    """An expectation value: '$...' reference, '=expression', or a literal (lists/dicts resolved inside)."""
    if isinstance(spec, str):
        if spec.startswith("="):
            return evaluate(spec, current, steps)
        if spec.startswith("$"):
            return resolve_ref(spec, current, steps)
        return spec
    if isinstance(spec, list):
        return [value_of(v, current, steps) for v in spec]
    return spec


# ---------------------------------------------------------------------------------------------- comparisons
def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):  # NaN/inf arrive as strings in JSON results
        try:
            return float(x)
        except ValueError:
            return None
    return None


def compare(op: str, actual: Any, expected: Any, tol: float | None = None) -> tuple[bool, str]:
    """(ok, reason when not ok) for one value."""
    if op in ("==", "!="):
        a, e = _num(actual), _num(expected)
        same = (a == e) if a is not None and e is not None and not isinstance(actual, str) else _same(actual, expected)
        return (same if op == "==" else not same), ""
    if op == "~=":
        a, e = _num(actual), _num(expected)
        if a is None or e is None:
            return False, "not a number"
        rel = 1e-6 if tol is None else tol
        return math.isclose(a, e, rel_tol=rel, abs_tol=1e-12), f"relative tolerance {rel:g}"
    if op in ("<", "<=", ">", ">="):
        a, e = _num(actual), _num(expected)
        if a is None or e is None or math.isnan(a):
            return False, "not a number"
        return {"<": a < e, "<=": a <= e, ">": a > e, ">=": a >= e}[op], ""
    if op in ("in", "not in"):
        if not isinstance(expected, list | tuple):
            return False, "the expected value must be a list"
        hit = any(_same(actual, x) or (_num(actual) is not None and _num(actual) == _num(x)) for x in expected)
        return (hit if op == "in" else not hit), ""
    if op == "contains":
        if isinstance(actual, str):
            return str(expected) in actual, ""
        if isinstance(actual, list | tuple | dict):
            return any(_same(x, expected) for x in actual), ""
        return False, "not a string or list"
    if op == "matches":
        return re.search(str(expected), "" if actual is None else str(actual)) is not None, ""
    if op == "exists":
        return True, ""
    if op == "is null":
        return actual is None, ""
    if op == "not null":
        return actual is not None, ""
    if op == "finite":
        a = _num(actual)
        return a is not None and math.isfinite(a), ""
    if op in ("nondecreasing", "nonincreasing"):
        if not isinstance(actual, list) or len(actual) < 2:
            return False, "needs a list of at least 2 numbers"
        xs = [_num(x) for x in actual]
        if any(x is None for x in xs):
            return False, "not all numbers"
        slack = tol or 0.0
        pairs = list(itertools.pairwise(xs))
        ok = all(b >= a - slack for a, b in pairs) if op == "nondecreasing" else all(b <= a + slack for a, b in pairs)
        return ok, ""
    if op in ("len ==", "len >="):
        if not isinstance(actual, list | tuple | dict | str):
            return False, "has no length"
        n, e = len(actual), _num(expected)
        return (n == e if op == "len ==" else n >= (e or 0)), f"length {n}"
    return False, f"unknown op {op!r}"


def check(expect: Expect, result: Any, steps: dict[str, Any]) -> Outcome:
    """Evaluate one expectation against ``result`` (this step's structured result)."""
    try:
        expr = expect.path.startswith("=")
        actual = evaluate(expect.path, result, steps) if expr else lookup(result, expect.path)
    except (PathError, ExprError) as err:
        if expect.op == "exists":
            return Outcome(ok=False, measured="missing", detail=str(err))
        return Outcome(ok=False, measured="missing", detail=f"{expect.path}: {err}")
    try:
        expected = value_of(expect.value, result, steps)
    except (PathError, ExprError) as err:
        return Outcome(ok=False, measured=actual, detail=f"expected value {expect.value!r}: {err}")
    if expect.each:
        if not isinstance(actual, list) or not actual:
            return Outcome(ok=False, measured=actual, expected=expected,
                           detail=f"{expect.path}: 'each' needs a non-empty list")
        bad = [(i, a) for i, a in enumerate(actual) if not compare(expect.op, a, expected, expect.tol)[0]]
        ok = not bad
        detail = "" if ok else (f"{expect.path}: item {bad[0][0]} = {_short(bad[0][1])} fails "
                                f"{expect.op} {_short(expected)}")
        return Outcome(ok=ok, measured=actual, expected=expected, detail=detail)
    ok, why = compare(expect.op, actual, expected, expect.tol)
    label = expect.why if expr and expect.why else expect.path  # a formula reads better by its meaning
    detail = "" if ok else (f"{label} = {_short(actual)}, expected {expect.op} {_short(expected)}"
                            + (f" ({why})" if why else ""))
    return Outcome(ok=ok, measured=actual, expected=expected, detail=detail)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 40) -> str:
    """Compact display of a measured value (floats to 4 significant digits, long values cut)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
        text = "[" + ", ".join(f"{v:.3g}" for v in value[:6]) + (", ..." if len(value) > 6 else "") + "]"
        return text if len(text) <= limit else text[: limit - 3] + "..."
    return _short(value, limit)
