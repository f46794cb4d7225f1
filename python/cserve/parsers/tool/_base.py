"""The tool-call parser engine: one incremental implementation for streaming and non-streaming.

A parser sees one choice's output text in pieces (`feed`) and at the end (`finish`). It emits
content as soon as it cannot be the start of a call marker, and each tool call whole, once the
call is complete and valid -- so nothing emitted ever has to be taken back, and any split of the
text gives the same result as the whole text at once. A call that turns out malformed (or is
cut off at the end of the output) is returned as content, verbatim.

Subclasses describe their format with marker tuples and a `scan_block` method; `scan_block` must
be monotone: on a buffer it either waits (None) or decides, and it decides the same on any
extension of that buffer.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

WAIT = object()  # scan result: need more text


@dataclass
class ToolCallDelta:
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolDelta:
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class Call:
    """A complete tool call found by a parser."""

    name: str
    arguments: str  # JSON text
    id: str | None = None


def args_json(value: Any) -> str:
    """Arguments as vLLM sends them: json.dumps(..., ensure_ascii=False)."""
    return json.dumps(value, ensure_ascii=False)


def call_from_dict(obj: Any, arg_keys: tuple[str, ...] = ("arguments", "parameters")) -> Call | None:
    """{"name": ..., "arguments"/"parameters": {...}} -> Call, or None when it is not one."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    args: Any = {}
    for k in arg_keys:
        if k in obj:
            args = obj[k]
            break
    if isinstance(args, str):  # some models send the arguments as JSON text
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return Call(name, args_json(args))


def calls_from_json(obj: Any, arg_keys: tuple[str, ...] = ("arguments", "parameters")) -> list[Call] | None:
    """A JSON list of call objects (or one object) -> calls; None if any is not a call."""
    items = obj if isinstance(obj, list) else [obj]
    calls = [call_from_dict(o, arg_keys) for o in items]
    return None if any(c is None for c in calls) else calls  # type: ignore[return-value]


_decoder = json.JSONDecoder()


def json_at(s: str, i: int, eof: bool) -> Any:
    """Decode one JSON object/array starting at s[i] (after whitespace).

    Returns (value, end) or WAIT (incomplete, more text may complete it) or None (malformed).
    Only objects and arrays are accepted: their end is definitive, so the result is monotone."""
    n = len(s)
    while i < n and s[i] in " \t\r\n":
        i += 1
    if i >= n:
        return None if eof else WAIT
    if s[i] not in "{[":
        return None
    try:
        return _decoder.raw_decode(s, i)
    except ValueError:
        return None if eof else WAIT


def skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def match_marker(buf: str, pos: int, markers: tuple[str, ...], eof: bool) -> Any:
    """The marker that starts at buf[pos]: a marker string, WAIT (buf ends inside what may still
    become a marker) or None. Prefers the longest marker."""
    rest = buf[pos:]
    best = None
    for m in markers:
        if rest.startswith(m) and (best is None or len(m) > len(best)):
            best = m
    if not eof:
        for m in markers:
            if len(m) > len(rest) and m.startswith(rest) and (best is None or len(m) > len(best)):
                return WAIT
    return best


def past_closer(buf: str, end: int, closer: str, eof: bool) -> Any:
    """Where a block ends when `closer` may follow it at `end` (after whitespace): past the
    closer when it is there, `end` when it is not, WAIT while it may still be arriving."""
    j = skip_ws(buf, end)
    m = match_marker(buf, j, (closer,), eof)
    if m is WAIT:
        return WAIT
    return j + len(m) if m else end


def find_marker(buf: str, markers: tuple[str, ...], eof: bool) -> tuple[int, Any]:
    """Earliest position in buf where a marker starts (or may start): (pos, marker|WAIT)."""
    if not markers:
        return -1, None
    starts = {m[0] for m in markers}
    for pos, ch in enumerate(buf):
        if ch in starts:
            m = match_marker(buf, pos, markers, eof)
            if m is not None:
                return pos, m
    return -1, None


class ToolParser:
    """One choice's output text, parsed incrementally into content and tool calls."""

    name: str = ""
    needs_special_tokens: bool = False

    # Markers that open a call block anywhere in the text.
    starts: tuple[str, ...] = ()
    # Markers removed silently where they appear outside a block (section begin/end tokens).
    drops: tuple[str, ...] = ()
    # Markers that open a call block only at the very start of the output (after whitespace,
    # `lead_seps` and `drops`) or right after a previous call; the text stays in the buffer
    # (it is part of the call, e.g. "{" or "[").
    leads: tuple[str, ...] = ()
    lead_seps: str = ""
    # For the default scan_block: the marker that closes a block.
    end: str = ""
    # The default scan_block accepts a block left open at the end of the output.
    accept_unclosed: bool = False

    def __init__(self, tools: list[dict] | None = None) -> None:
        self.tools = tools or []
        self._buf = ""
        self._state = "lead" if self.leads else "text"
        self._marker = ""
        self._after_call = False
        self._index = 0
        self._done = False

    # -- format hooks ------------------------------------------------------------------------

    def scan_block(self, marker: str, buf: str, eof: bool) -> Any:
        """buf is the text after `marker` (for a lead, buf starts with the lead itself).

        Returns WAIT, or (consumed, calls) where calls is a list of Call (possibly empty) or None
        for a malformed block (then marker + buf[:consumed] becomes content)."""
        if not self.end:
            raise NotImplementedError
        i = buf.find(self.end)
        if i < 0:
            if not eof:
                return WAIT
            if not self.accept_unclosed:
                return len(buf), None
            return len(buf), self.parse_body(buf)
        return i + len(self.end), self.parse_body(buf[:i])

    def parse_body(self, body: str) -> list[Call] | None:
        raise NotImplementedError

    def new_id(self) -> str:
        return f"chatcmpl-tool-{uuid.uuid4().hex}"

    # -- tools' schemas ----------------------------------------------------------------------

    def param_schema(self, func: str) -> dict:
        """The `properties` of a tool's parameters (empty when unknown)."""
        for t in self.tools:
            fn = t.get("function") if isinstance(t, dict) else None
            if isinstance(fn, dict) and fn.get("name") == func:
                params = fn.get("parameters") or {}
                if isinstance(params, dict):
                    props = params.get("properties", params)
                    return props if isinstance(props, dict) else {}
        return {}

    # -- the engine --------------------------------------------------------------------------

    def feed(self, text: str) -> ToolDelta:
        if self._done:
            raise RuntimeError("feed() after finish()")
        self._buf += text
        return self._run(False)

    def finish(self) -> ToolDelta:
        if self._done:
            return ToolDelta()
        out = self._run(True)
        self._done = True
        return out

    def _content(self, out: ToolDelta, text: str) -> None:
        if self._after_call:
            stripped = text.lstrip(" \t\r\n")
            if not stripped:
                return
            text = stripped
            self._after_call = False
        out.content += text

    def _emit(self, out: ToolDelta, calls: list[Call]) -> None:
        for c in calls:
            out.calls.append(ToolCallDelta(self._index, c.id or self.new_id(), c.name, c.arguments))
            self._index += 1
        if calls:
            self._after_call = True

    def _run(self, eof: bool) -> ToolDelta:
        out = ToolDelta()
        while self._step(out, eof):
            pass
        return out

    def _step(self, out: ToolDelta, eof: bool) -> bool:
        buf = self._buf
        if self._state == "lead":
            i = skip_ws(buf, 0)
            while i < len(buf) and buf[i] in self.lead_seps:
                i = skip_ws(buf, i + 1)
            if i >= len(buf):
                if eof:
                    self._state = "text"
                    return True
                return False
            m = match_marker(buf, i, self.drops, eof)
            if m is WAIT:
                return False
            if m:
                self._buf = buf[i + len(m):]
                return True
            m = match_marker(buf, i, self.leads, eof)
            if m is WAIT:
                return False
            if m:
                # whitespace before a call is dropped
                self._buf = buf[i:]
                self._state, self._marker = "block", ""
                return True
            self._state = "text"
            return True
        if self._state == "text":
            if self._after_call:
                j = skip_ws(buf, 0)
                buf = self._buf = buf[j:]
                if not buf:
                    return False
            pos, m = find_marker(buf, self.starts + self.drops, eof)
            if m is None:
                self._content(out, buf)
                self._buf = ""
                return False
            self._content(out, buf[:pos])
            self._buf = buf[pos:]
            if m is WAIT:
                return False
            self._buf = buf[pos + len(m):]
            if m in self.drops and m not in self.starts:
                return True
            self._state, self._marker = "block", m
            return True
        # block
        marker = self._marker
        r = self.scan_block(marker, buf, eof)
        if r is WAIT:
            if eof:  # a scan_block must decide at eof; treat as malformed
                r = (len(buf), None)
            else:
                return False
        consumed, calls = r
        self._buf = buf[consumed:]
        if calls is None:
            self._content(out, marker + buf[:consumed])
            self._state = "text"
        else:
            self._emit(out, calls)
            self._state = "lead" if (self.leads and not marker) else "text"
        return True


def assemble(deltas: list[ToolDelta]) -> tuple[str, list[dict]]:
    content = "".join(d.content for d in deltas)
    calls: dict[int, dict] = {}
    for d in deltas:
        for c in d.calls:
            entry = calls.setdefault(
                c.index, {"id": None, "type": "function", "function": {"name": None, "arguments": ""}}
            )
            if c.id is not None and entry["id"] is None:
                entry["id"] = c.id
            if c.name is not None and entry["function"]["name"] is None:
                entry["function"]["name"] = c.name
            entry["function"]["arguments"] += c.arguments
    return content, [calls[i] for i in sorted(calls)]
