"""glm45: `<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>\n</tool_call>`
(GLM-4.5 / 4.6). A value is JSON (or a Python literal) unless the tool's schema says string."""

from __future__ import annotations

import re

from ._base import Call, ToolParser, args_json
from ._values import convert_typed, schema_type

_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


class Glm45ToolParser(ToolParser):
    name = "glm45"
    needs_special_tokens = True
    starts = ("<tool_call>",)
    end = "</tool_call>"

    def parse_body(self, body: str) -> list[Call] | None:
        k = body.find("<arg_key>")
        name = (body if k < 0 else body[:k]).strip()
        if not name or "<" in name or "\n" in name:
            return None
        rest = "" if k < 0 else body[k:]
        if _PAIR.sub("", rest).strip():
            return None
        schema = self.param_schema(name)
        args = {}
        for key, value in _PAIR.findall(rest):
            key = key.strip()
            args[key] = convert_typed(value, schema_type(schema, key), "json")
        return [Call(name, args_json(args))]
