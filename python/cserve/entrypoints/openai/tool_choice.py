"""tool_choice "required" and a named function, as vLLM serves them: the output is forced by a JSON
schema built from the tools (structured outputs) and parsed without a model-specific parser.

- named ({"type": "function", "function": {"name": N}}): the schema is N's parameters; the whole
  output is the arguments of one call to N.
- "required": the schema is a JSON array (at least one item; at most one when
  parallel_tool_calls is false) of {"name": <a tool's name>, "parameters": <its parameters>};
  each item is a call.

The parsers have the interface of parsers.tool.ToolParser (feed / finish -> ToolDelta), so the
chat path runs them like any tool parser, after the reasoning parser, streamed or not."""

from __future__ import annotations

from typing import Any, Optional

from cserve.entrypoints.openai.chat_parsing import effective_tool_choice
from cserve.entrypoints.openai.errors import APIError
from cserve.parsers.tool import ToolCallDelta, ToolDelta, ToolParser
from cserve.parsers.tool._base import WAIT, args_json, json_at, skip_ws

_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'
# A tool without parameters takes an empty object, as vLLM builds it.
_NO_PARAMETERS = {"type": "object", "properties": {}}


def forced_tool_choice(request) -> Any:
    """"required", the named function's name, or None (any other tool_choice). "required" with
    an empty tools list behaves as "none", as in OpenAI and vLLM."""
    choice = effective_tool_choice(request)
    if choice == "required":
        return "required" if request.tools else None
    if isinstance(choice, dict):
        return choice["function"]["name"]  # checked by check_tool_choice
    return None


def check_tool_choice(request) -> None:
    """vLLM's checks of tool_choice and, when it forces calls, of the tools (400s naming the field)."""
    choice = effective_tool_choice(request)
    if choice is None or choice == "none":
        return
    if request.tools is None:
        raise APIError("When using `tool_choice`, `tools` must be set.", 400, "tool_choice")
    if choice == "auto":
        return
    if choice == "required":
        _tool_functions(request.tools)
        return
    if not isinstance(choice, dict):
        raise APIError(f"Invalid value for `tool_choice`: {choice}! Only named tools, \"none\", \"auto\" or "
                       "\"required\" are supported.", 400, "tool_choice")
    if choice.get("type", "function") != "function":
        raise APIError(f"Invalid `type` in `tool_choice`: `{choice.get('type')}`! {_USAGE}", 400, "tool_choice")
    function = choice.get("function")
    if not isinstance(function, dict):
        raise APIError(f"Invalid value for `function`: `{function}` in `tool_choice`! {_USAGE}", 400, "tool_choice")
    if "name" not in function:
        raise APIError(f"Expected field `name` in `function` in `tool_choice`! {_USAGE}", 400, "tool_choice")
    name = function["name"]
    if not isinstance(name, str) or not name:
        raise APIError(f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_USAGE}", 400, "tool_choice")
    if name not in _tool_functions(request.tools):
        raise APIError("The tool specified in `tool_choice` does not match any of the specified `tools`", 400,
                       "tool_choice")


def _tool_functions(tools: list) -> dict[str, Optional[dict]]:
    """name -> parameters (None when not given) of each tool, checking their shape."""
    out: dict[str, Optional[dict]] = {}
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise APIError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.", 400,
                           f"tools.{i}")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise APIError(f"tools[{i}].function.name must be a non-empty string.", 400, f"tools.{i}.function.name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise APIError(f"tools[{i}].function.parameters must be a JSON schema object.", 400,
                           f"tools.{i}.function.parameters")
        out.setdefault(name, params)
    return out


def tool_choice_schema(request) -> Optional[dict]:
    """The JSON schema that forces the request's tool_choice, or None when it forces nothing."""
    forced = forced_tool_choice(request)
    if forced is None:
        return None
    functions = _tool_functions(request.tools)
    if forced != "required":
        return functions[forced] or dict(_NO_PARAMETERS)
    items = []
    defs: dict[str, Any] = {}
    for tool in request.tools:
        fn = tool["function"]
        params = fn.get("parameters") or dict(_NO_PARAMETERS)
        # Each tool's $defs move to the root, where its "#/$defs/..." references then point.
        params = dict(params)
        for def_name, def_schema in (params.pop("$defs", None) or {}).items():
            if def_name in defs and defs[def_name] != def_schema:
                raise APIError(f"Tool definition '{def_name}' has multiple schemas, which is not supported.", 400,
                               "tools")
            defs[def_name] = def_schema
        items.append({"properties": {"name": {"type": "string", "enum": [fn["name"]]}, "parameters": params},
                      "required": ["name", "parameters"]})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": items}}
    if request.parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


class NamedToolCallParser(ToolParser):
    """The whole output is the arguments of one call to `function`: the call's id and name go
    out with its first text, the arguments as the text comes (an empty output still makes the
    call, with empty arguments). finish_reason stays the engine's, as vLLM."""

    calls_finish_reason = "keep"

    def __init__(self, function: str, tools: Optional[list] = None) -> None:
        super().__init__(tools)
        self.function = function
        self._started = False

    def feed(self, text: str) -> ToolDelta:
        if self._done:
            raise RuntimeError("feed() after finish()")
        return self._arguments(text) if text else ToolDelta()

    def finish(self) -> ToolDelta:
        out = ToolDelta() if self._started or self._done else self._arguments("")
        self._done = True
        return out

    def _arguments(self, text: str) -> ToolDelta:
        if self._started:
            return ToolDelta(calls=[ToolCallDelta(0, arguments=text)])
        self._started = True
        return ToolDelta(calls=[ToolCallDelta(0, self.new_id(), self.function, text)])


class RequiredToolCallsParser(ToolParser):
    """The output is a JSON array of {"name", "parameters"} objects: each item goes out as a whole
    call once it is complete (arguments = its parameters as JSON). Text that does not continue the
    array (an output cut short, or not constrained) is content, verbatim from the first item that
    did not become a call. finish_reason is "tool_calls" when calls were made and the output
    ended normally ("stop"), as vLLM."""

    calls_finish_reason = "on_stop"

    def __init__(self, tools: Optional[list] = None) -> None:
        super().__init__(tools)  # feed() and finish() append to self._buf and call _run
        self._pos = 0  # the parse cursor in _buf, which keeps the whole output
        self._mark = 0  # _buf[:_mark] became calls (or the array's punctuation)
        self._state = "open"  # open, first, item, next, closed, text
        self._text_started = False  # content went out
        self._tried = 0  # _buf[:_tried] did not complete the item being read

    def _content(self) -> str:
        rest = self._buf[self._mark:]
        self._mark = self._pos = len(self._buf)
        if self._index and not self._text_started:  # after a call, the whitespace before the rest is the array's
            rest = rest.lstrip(" \t\r\n")
        self._text_started = self._text_started or bool(rest)
        return rest

    def _run(self, eof: bool) -> ToolDelta:
        out = ToolDelta()
        while True:
            if self._state == "text":
                out.content += self._content()
                return out
            i = skip_ws(self._buf, self._pos)
            if i >= len(self._buf):
                if eof:  # cut short inside the array: what is left is content
                    self._state = "text"
                    continue
                return out
            ch = self._buf[i]
            state = self._state
            if state == "open":
                if ch != "[":
                    self._state = "text"
                    continue
                self._pos = i + 1
                self._state = "first"
            elif state in ("first", "next") and ch == "]":
                self._pos = i + 1
                if self._index:  # an array without calls stays content
                    self._mark = self._pos
                self._state = "closed"
            elif state == "next":
                if ch != ",":
                    self._state = "text"
                    continue
                self._pos = self._mark = i + 1
                self._state = "item"
            elif state in ("first", "item"):
                if not self._item(out, i, eof):
                    return out
            else:  # closed: anything but whitespace after the array is content
                if self._index:
                    self._mark = i
                self._state = "text"

    def _item(self, out: ToolDelta, i: int, eof: bool) -> bool:
        """Parses the item at i: False while it is incomplete."""
        if self._buf[i] != "{":
            self._state = "text"
            return True
        if not eof and "}" not in self._buf[self._tried:]:
            return False  # an object can only end with a new "}"
        r = json_at(self._buf, i, eof)
        if r is WAIT:
            self._tried = len(self._buf)
            return False
        call = _call_of(r[0]) if r is not None else None
        if call is None:
            self._state = "text"
            return True
        name, arguments = call
        out.calls.append(ToolCallDelta(self._index, self.new_id(), name, arguments))
        self._index += 1
        self._pos = self._mark = r[1]
        self._state = "next"
        return True


def _call_of(item: Any) -> Optional[tuple[str, str]]:
    """(name, arguments JSON) of an array item {"name": ..., "parameters": {...}}, or None."""
    if not isinstance(item, dict):
        return None
    name = item.get("name")
    params = item.get("parameters", {})
    if not isinstance(name, str) or not name or not isinstance(params, dict):
        return None
    return name, args_json(params)


def forced_tool_parser(request):
    """The parser factory (tools -> parser) for a forced tool_choice, or None."""
    forced = forced_tool_choice(request)
    if forced is None:
        return None
    if forced == "required":
        return RequiredToolCallsParser
    return lambda tools: NamedToolCallParser(forced, tools)
