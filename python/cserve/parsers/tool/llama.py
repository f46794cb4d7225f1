"""llama3_json: the whole output is `{"name": ..., "parameters": {...}}` (optionally after
`<|python_tag|>`), several calls separated by `;` (Llama 3.1/3.2/3.3, Llama 4 JSON)."""

from __future__ import annotations

from ._base import WAIT, ToolParser, call_from_dict, json_at


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    needs_special_tokens = False  # <|python_tag|> is optional
    leads = ("{",)
    drops = ("<|python_tag|>",)
    lead_seps = ";"

    def scan_block(self, marker, buf, eof):
        r = json_at(buf, 0, eof)
        if r is WAIT:
            return WAIT
        if r is None:
            return len(buf), None
        obj, end = r
        c = call_from_dict(obj)
        return end, (None if c is None else [c])
