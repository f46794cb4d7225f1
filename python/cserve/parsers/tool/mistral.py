"""mistral: `[TOOL_CALLS]` (a special token) then either a JSON list
`[{"name": ..., "arguments": {...}}, ...]` (tokenizer < v11) or `name{...}` / `name[ARGS]{...}`
per call, each after its own `[TOOL_CALLS]` (tokenizer v11+, Magistral, Devstral).
Ids are 9 alphanumeric characters, as Mistral's validator requires."""

from __future__ import annotations

import random
import re
import string

from ._base import WAIT, Call, ToolParser, args_json, calls_from_json, json_at, skip_ws

_ALNUM = string.ascii_letters + string.digits
_NAME = re.compile(r"[A-Za-z0-9_.\-]*")


class MistralToolParser(ToolParser):
    name = "mistral"
    needs_special_tokens = True
    starts = ("[TOOL_CALLS]",)

    def new_id(self) -> str:
        return "".join(random.choices(_ALNUM, k=9))

    def scan_block(self, marker, buf, eof):
        i = skip_ws(buf, 0)
        if i >= len(buf):
            return (len(buf), None) if eof else WAIT
        if buf[i] in "[{":
            r = json_at(buf, i, eof)
            if r is WAIT:
                return WAIT
            if r is None:
                return len(buf), None
            obj, end = r
            return end, calls_from_json(obj)
        m = _NAME.match(buf, i)
        name, j = m.group(0), m.end()
        rest = buf[j:]
        if not rest:
            return (len(buf), None) if eof else WAIT
        if rest[0] == "[":
            # name[ARGS]{...} or name[CALL_ID]id[ARGS]{...}
            if rest.startswith("[CALL_ID]"):
                m2 = _NAME.match(buf, j + 9)
                j = m2.end()
                rest = buf[j:]
            if "[ARGS]".startswith(rest) and not eof:
                return WAIT
            if not rest.startswith("[ARGS]"):
                return 0, None
            j += 6
        elif rest[0] != "{":
            return 0, None
        if not name:
            return 0, None
        r = json_at(buf, j, eof)
        if r is WAIT:
            return WAIT
        if r is None or not isinstance(r[0], dict):
            return (len(buf), None) if r is None else (r[1], None)
        obj, end = r
        return end, [Call(name, args_json(obj))]
