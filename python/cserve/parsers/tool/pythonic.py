"""pythonic: the output is a Python list of calls, `[get_weather(city="Paris"), f(x=1)]`
(Llama 3.2 pythonic, ToolACE); llama4_pythonic: the same, optionally inside
`<|python_start|>` ... `<|python_end|>` (Llama 4)."""

from __future__ import annotations

import ast

from ._base import WAIT, Call, ToolParser, args_json


def _bracket_end(s: str) -> int | None:
    """Index just past the `]` that closes s[0] == "[", or None if s ends first."""
    depth = 0
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch in "'\"":
            q3 = s[i:i + 3]
            if q3 in ("'''", '"""'):
                j = s.find(q3, i + 3)
                while j > 0 and s[j - 1] == "\\":
                    j = s.find(q3, j + 1)
                if j < 0:
                    return None
                i = j + 3
                continue
            i += 1
            while i < n and s[i] != ch:
                if s[i] == "\\":
                    i += 1
                elif s[i] == "\n":
                    break
                i += 1
            if i >= n:
                return None
            i += 1
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _parse_calls(src: str) -> list[Call] | None:
    try:
        tree = ast.parse(src, mode="eval").body
    except (SyntaxError, ValueError):
        return None
    if not isinstance(tree, ast.List):
        return None
    calls = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or node.args:
            return None
        f = node.func
        parts = []
        while isinstance(f, ast.Attribute):
            parts.append(f.attr)
            f = f.value
        if not isinstance(f, ast.Name):
            return None
        parts.append(f.id)
        args = {}
        for kw in node.keywords:
            if kw.arg is None:
                return None
            try:
                args[kw.arg] = ast.literal_eval(kw.value)
            except (ValueError, SyntaxError, TypeError):
                return None
        try:
            text = args_json(args)
        except (TypeError, ValueError):  # sets, bytes, complex ...
            return None
        calls.append(Call(".".join(reversed(parts)), text))
    return calls


class PythonicToolParser(ToolParser):
    name = "pythonic"
    leads = ("[",)

    def scan_block(self, marker, buf, eof):
        end = _bracket_end(buf)
        if end is None:
            return (len(buf), None) if eof else WAIT
        return end, _parse_calls(buf[:end])


class Llama4PythonicToolParser(PythonicToolParser):
    name = "llama4_pythonic"
    needs_special_tokens = True
    drops = ("<|python_start|>", "<|python_end|>")
