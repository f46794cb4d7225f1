"""hermes: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes 2/3, Qwen2.5, Qwen3)."""

from __future__ import annotations

import json

from ._base import Call, ToolParser, call_from_dict


class HermesToolParser(ToolParser):
    name = "hermes"
    needs_special_tokens = True
    starts = ("<tool_call>",)
    end = "</tool_call>"
    accept_unclosed = True  # vLLM accepts a last call whose </tool_call> never came

    def parse_body(self, body: str) -> list[Call] | None:
        try:
            obj = json.loads(body.strip())
        except ValueError:
            return None
        c = call_from_dict(obj)
        return None if c is None else [c]
