"""kimi_k2: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX
<|tool_call_argument_begin|>{...}<|tool_call_end|>...<|tool_calls_section_end|>` (Kimi K2).
The call's id is the model's own `functions.NAME:IDX`, as vLLM sends it."""

from __future__ import annotations

import json

from ._base import Call, ToolParser, args_json

_ARG = "<|tool_call_argument_begin|>"


class KimiK2ToolParser(ToolParser):
    name = "kimi_k2"
    needs_special_tokens = True
    starts = ("<|tool_call_begin|>",)
    drops = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>",
             "<|tool_call_section_begin|>", "<|tool_call_section_end|>")
    end = "<|tool_call_end|>"

    def parse_body(self, body: str) -> list[Call] | None:
        if _ARG not in body:
            return None
        fid, text = body.split(_ARG, 1)
        fid = fid.strip()
        name = fid.split(":", 1)[0]
        name = name.split(".", 1)[1] if name.startswith("functions.") else name
        try:
            obj = json.loads(text.strip())
        except ValueError:
            return None
        if not name or not isinstance(obj, dict):
            return None
        return [Call(name, args_json(obj), id=fid)]
