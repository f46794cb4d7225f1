"""deepseek_v3: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME
```json {...} ```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>` (DeepSeek V3, R1-0528);
deepseek_v31: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>` (DeepSeek V3.1)."""

from __future__ import annotations

import json
import re

from ._base import Call, ToolParser, args_json

_SEP = "<｜tool▁sep｜>"
_V3 = re.compile(r"^\s*(\w+)\s*" + _SEP + r"\s*([^\n`]+?)\s*\n\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class DeepSeekV3ToolParser(ToolParser):
    name = "deepseek_v3"
    needs_special_tokens = False
    starts = ("<｜tool▁call▁begin｜>",)
    drops = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>")
    end = "<｜tool▁call▁end｜>"

    def _args(self, text: str) -> str | None:
        try:
            obj = json.loads(text)
        except ValueError:
            return None
        return args_json(obj) if isinstance(obj, dict) else None

    def parse_body(self, body: str) -> list[Call] | None:
        m = _V3.match(body)
        if not m:
            return None
        args = self._args(m.group(3))
        return None if args is None else [Call(m.group(2), args)]


class DeepSeekV31ToolParser(DeepSeekV3ToolParser):
    name = "deepseek_v31"

    def parse_body(self, body: str) -> list[Call] | None:
        if _SEP not in body:
            return None
        name, text = body.split(_SEP, 1)
        name = name.strip()
        args = self._args(text.strip())
        return None if args is None or not name else [Call(name, args)]
