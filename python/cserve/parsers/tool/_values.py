"""Converting XML-style parameter values (text) to JSON values, by the tool's schema."""

from __future__ import annotations

import ast
import json
import math
from typing import Any


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        v = ast.literal_eval(text)
        json.dumps(v)
        return v
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def schema_type(schema: dict, name: str) -> str | None:
    p = schema.get(name)
    if not isinstance(p, dict):
        return None
    t = p.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return str(t).strip().lower() if t is not None else ("string" if "enum" in p else None)


def convert_typed(text: str, typ: str | None, untyped: str = "string") -> Any:
    """A parameter's text -> value, as vLLM's qwen3_coder / minimax_m2 convert them.

    typ is the schema type (None when the tool or parameter is unknown); `untyped` says what
    to do then: "string" keeps the text, "json" tries JSON / Python literals."""
    if text.lower() == "null":
        return None
    if typ is None:
        return text if untyped == "string" else _literal(text)
    if typ in ("string", "str", "text", "varchar", "char", "enum"):
        return text
    if typ.startswith(("int", "uint", "long", "short", "unsigned")):
        try:
            return int(text)
        except ValueError:
            return text
    if typ.startswith(("num", "float", "double")):
        try:
            f = float(text)
        except ValueError:
            return text
        if math.isnan(f) or math.isinf(f):
            return text
        return int(f) if f == int(f) and "." not in text and "e" not in text.lower() else f
    if typ in ("boolean", "bool", "binary"):
        return text.strip().lower() == "true"
    return _literal(text)
