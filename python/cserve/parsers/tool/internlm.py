"""internlm: `<|action_start|><|plugin|>{"name": ..., "parameters": {...}}<|action_end|>`
(InternLM2/2.5; the markers are special tokens)."""

from __future__ import annotations

from ._base import WAIT, ToolParser, call_from_dict, json_at, match_marker, past_closer, skip_ws

_PLUGIN = "<|plugin|>"
_END = "<|action_end|>"


class InternLMToolParser(ToolParser):
    name = "internlm"
    needs_special_tokens = True
    starts = ("<|action_start|>",)

    def scan_block(self, marker, buf, eof):
        j = skip_ws(buf, 0)
        m = match_marker(buf, j, (_PLUGIN,), eof)
        if m is WAIT:
            return WAIT
        if not m:
            return 0, None  # e.g. <|interpreter|>: not a function call
        r = json_at(buf, j + len(m), eof)
        if r is WAIT:
            return WAIT
        if r is None:
            return len(buf), None
        obj, end = r
        end = past_closer(buf, end, _END, eof)
        if end is WAIT:
            return WAIT
        c = call_from_dict(obj, ("parameters", "arguments"))
        return end, (None if c is None else [c])
