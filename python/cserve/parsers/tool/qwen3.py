"""qwen3_coder / qwen3_xml: `<tool_call><function=NAME><parameter=P>value</parameter>...
</function></tool_call>` (Qwen3-Coder, Qwen3-Next). Values are converted by the tool's schema
(strings stay text; numbers, booleans, objects and arrays are parsed); a parameter the tools don't
describe stays a string."""

from __future__ import annotations

import re

from ._base import Call, ToolParser, args_json
from ._values import convert_typed, schema_type

_FUNC = re.compile(r"<function=(.*?)</function>", re.DOTALL)
_PARAM = re.compile(r"<parameter=(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)


class Qwen3CoderToolParser(ToolParser):
    name = "qwen3_coder"
    needs_special_tokens = False
    starts = ("<tool_call>",)
    end = "</tool_call>"
    accept_unclosed = True  # only complete <function=...></function> inside count

    def parse_body(self, body: str) -> list[Call] | None:
        funcs = _FUNC.findall(body)
        if not funcs or body.count("<function=") != len(funcs):
            return None
        calls = []
        for f in funcs:
            if ">" not in f:
                return None
            name, params = f.split(">", 1)
            name = name.strip()
            if not name:
                return None
            schema = self.param_schema(name)
            args = {}
            for p in _PARAM.findall(params):
                if ">" not in p:
                    return None
                pname, value = p.split(">", 1)
                value = value.removeprefix("\n")
                value = value.removesuffix("\n")
                args[pname.strip()] = convert_typed(value, schema_type(schema, pname.strip()))
            calls.append(Call(name, args_json(args)))
        return calls


class Qwen3XmlToolParser(Qwen3CoderToolParser):
    name = "qwen3_xml"
