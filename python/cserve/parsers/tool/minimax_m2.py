"""minimax_m2: `<minimax:tool_call><invoke name="NAME"><parameter name="K">V</parameter>
</invoke>...</minimax:tool_call>` (MiniMax-M2). Values converted by the tool's schema; a
parameter the tools don't describe is parsed as JSON when it is JSON, else kept as text."""

from __future__ import annotations

import re

from ._base import Call, ToolParser, args_json
from ._values import convert_typed, schema_type

_INVOKE = re.compile(r"<invoke\s+name=[\"']?([^\"'>]+)[\"']?\s*>(.*?)</invoke>", re.DOTALL)
_PARAM = re.compile(r"<parameter\s+name=[\"']?([^\"'>]+)[\"']?\s*>(.*?)</parameter>", re.DOTALL)


class MinimaxM2ToolParser(ToolParser):
    name = "minimax_m2"
    needs_special_tokens = True
    starts = ("<minimax:tool_call>",)
    end = "</minimax:tool_call>"

    def parse_body(self, body: str) -> list[Call] | None:
        invokes = _INVOKE.findall(body)
        if not invokes or _INVOKE.sub("", body).strip():
            return None
        calls = []
        for name, inner in invokes:
            name = name.strip()
            schema = self.param_schema(name)
            args = {}
            for key, value in _PARAM.findall(inner):
                key = key.strip()
                value = value.strip("\n")
                args[key] = convert_typed(value, schema_type(schema, key), "json")
            calls.append(Call(name, args_json(args)))
        return calls
