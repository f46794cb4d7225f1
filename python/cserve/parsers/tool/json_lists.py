"""Formats whose calls are a JSON list after a marker.

- xlam: the whole output is `[{"name": ..., "arguments": {...}}]`, optionally in a
  ```json fence or after `[TOOL_CALLS]` / inside `<tool_call>...</tool_call>` (Salesforce xLAM).
- phi4_mini_json: `functools[{"name": ..., "arguments": {...}}]` (Phi-4-mini).
- granite: `<|tool_call|>[...]` (Granite 3.0) or `<tool_call>[...]` (Granite 3.1+).
- jamba: `<tool_calls>[...]</tool_calls>` (Jamba 1.5+).
"""

from __future__ import annotations

import json
from typing import ClassVar

from ._base import (
    WAIT,
    Call,
    ToolParser,
    calls_from_json,
    json_at,
    match_marker,
    past_closer,
    skip_ws,
)


class _JsonAfterMarker(ToolParser):
    """marker, a JSON list (or one object) of calls, then an optional closing tag."""

    closers: ClassVar[dict[str, str]] = {}

    def scan_block(self, marker, buf, eof):
        r = json_at(buf, 0, eof)
        if r is WAIT:
            return WAIT
        if r is None:
            return len(buf), None
        obj, end = r
        closer = self.closers.get(marker)
        if closer:
            end = past_closer(buf, end, closer, eof)
            if end is WAIT:
                return WAIT
        return end, calls_from_json(obj)


class XlamToolParser(_JsonAfterMarker):
    name = "xlam"
    leads = ("[", "{", "```json", "```", "[TOOL_CALLS]", "<tool_call>")
    closers: ClassVar[dict[str, str]] = {"```json": "```", "```": "```", "<tool_call>": "</tool_call>"}

    def scan_block(self, marker, buf, eof):
        # a lead: buf starts with it
        lead = match_marker(buf, 0, self.leads, True)
        if lead in ("[", "{"):
            return super().scan_block("", buf, eof)
        r = super().scan_block(lead, buf[len(lead):], eof)
        if r is WAIT:
            return WAIT
        consumed, calls = r
        return consumed + len(lead), calls


class Phi4MiniJsonToolParser(_JsonAfterMarker):
    name = "phi4_mini_json"
    starts = ("functools",)

    def scan_block(self, marker, buf, eof):
        j = skip_ws(buf, 0)
        if j >= len(buf):
            return (len(buf), None) if eof else WAIT
        if buf[j] != "[":
            return 0, None  # the word "functools" in prose
        return super().scan_block(marker, buf, eof)


class GraniteToolParser(_JsonAfterMarker):
    name = "granite"
    starts = ("<|tool_call|>", "<tool_call>")


class JambaToolParser(ToolParser):
    name = "jamba"
    needs_special_tokens = True
    starts = ("<tool_calls>",)
    end = "</tool_calls>"

    def parse_body(self, body: str) -> list[Call] | None:
        try:
            obj = json.loads(body.strip())
        except ValueError:
            return None
        return calls_from_json(obj)
