"""Reasoning and tool calls in chat outputs: each choice's text goes through the request's
reasoning parser (--reasoning-parser) and then its tool parser (tool_choice "auto" with
--enable-auto-tool-choice --tool-call-parser; "required" or named: tool_choice.py's). Both
parsers are incremental, and the streamed and the non-streamed responses feed them the same text,
so the two cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from cserve.entrypoints.openai.errors import APIError


@dataclass
class ParsedDelta:
    reasoning: str = ""
    content: str = ""
    tool_calls: list = field(default_factory=list)  # parsers.tool.ToolCallDelta


class ChoiceParsers:
    """One choice's parsers; feed() each text delta, with finished=True on the last one."""

    def __init__(self, reasoning_cls, tool_cls, tools: Optional[list], template_kwargs: Optional[dict],
                 parallel: bool = True) -> None:
        self.reasoning = reasoning_cls(template_kwargs) if reasoning_cls is not None else None
        self.tools = tool_cls(tools) if tool_cls is not None else None
        self.parallel = parallel
        self.made_calls = False

    def feed(self, text: str, finished: bool) -> ParsedDelta:
        reasoning, content = self.reasoning.feed(text) if self.reasoning is not None else ("", text)
        if finished and self.reasoning is not None:
            r, c = self.reasoning.finish()
            reasoning, content = reasoning + r, content + c
        out = ParsedDelta(reasoning=reasoning, content=content)
        if self.tools is not None:
            parsed = self.tools.feed(content)
            out.content, out.tool_calls = parsed.content, list(parsed.calls)
            if finished:
                tail = self.tools.finish()
                out.content += tail.content
                out.tool_calls += tail.calls
            if not self.parallel:  # parallel_tool_calls false: the first call only, as vLLM
                out.tool_calls = [c for c in out.tool_calls if c.index == 0]
            self.made_calls = self.made_calls or bool(out.tool_calls)
        return out

    def finish_reason(self, reason: Optional[str]) -> Optional[str]:
        """The choice's finish_reason, given the engine's: "tool_calls" once calls were made, as
        vLLM says it (a parser's calls_finish_reason: "keep" leaves the engine's, "on_stop" changes
        only "stop")."""
        if reason is None or not self.made_calls:
            return reason
        rule = getattr(self.tools, "calls_finish_reason", "always")
        if rule == "keep" or (rule == "on_stop" and reason != "stop"):
            return reason
        return "tool_calls"


def tool_call_json(call) -> dict:
    """A ToolCallDelta as OpenAI's streamed tool_call delta."""
    entry: dict[str, Any] = {"index": call.index}
    if call.id is not None:
        entry["id"] = call.id
        entry["type"] = "function"
    function: dict[str, Any] = {}
    if call.name is not None:
        function["name"] = call.name
    if call.arguments or call.name is not None:
        function["arguments"] = call.arguments
    if function:
        entry["function"] = function
    return entry


def merge_tool_calls(deltas: list) -> list[dict]:
    """Streamed tool_call deltas joined into the message's tool_calls."""
    calls: dict[int, dict] = {}
    for d in deltas:
        call = calls.setdefault(d.index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if d.id is not None:
            call["id"] = d.id
        if d.name is not None:
            call["function"]["name"] = d.name
        call["function"]["arguments"] += d.arguments
    return [calls[i] for i in sorted(calls)]


class ChatParsing:
    """What a chat request parses: resolved once per request from the flags and its fields."""

    def __init__(self, state, request) -> None:
        args = state.args
        self.reasoning_cls = None
        self.tool_cls = None
        self.include_reasoning = getattr(request, "include_reasoning", True) is not False
        if args.reasoning_parser:
            from cserve.parsers.reasoning import get_reasoning_parser

            self.reasoning_cls = get_reasoning_parser(args.reasoning_parser)
        self.tools = request.tools
        if request.tools and effective_tool_choice(request) == "auto":
            if not (args.enable_auto_tool_choice and args.tool_call_parser):
                raise APIError('"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be '
                               "set", 400, "tool_choice")
            from cserve.parsers.tool import get_tool_parser

            self.tool_cls = get_tool_parser(args.tool_call_parser)
        elif request.tools:
            from cserve.entrypoints.openai.tool_choice import forced_tool_parser

            self.tool_cls = forced_tool_parser(request)
        self.parallel = getattr(request, "parallel_tool_calls", None) is not False
        self.template_kwargs = dict(request.chat_template_kwargs or {})

    @property
    def active(self) -> bool:
        return self.reasoning_cls is not None or self.tool_cls is not None

    @property
    def needs_special_tokens(self) -> bool:
        return any(getattr(c, "needs_special_tokens", False) for c in (self.reasoning_cls, self.tool_cls) if c)

    def for_choice(self) -> ChoiceParsers:
        return ChoiceParsers(self.reasoning_cls, self.tool_cls, self.tools, self.template_kwargs, self.parallel)


def effective_tool_choice(request) -> Any:
    """vLLM's default: "auto" when tools are given without a tool_choice, else "none"."""
    if "tool_choice" not in request.model_fields_set:
        return "auto" if request.tools else "none"
    return request.tool_choice


def check_parser_flags(args) -> None:
    """At start: load --tool-parser-plugin / --reasoning-parser-plugin files and check the parser
    names, so a typo stops the server with the list of names instead of failing every request."""
    if args.tool_parser_plugin or args.tool_call_parser:
        from cserve.parsers.tool import get_tool_parser, load_tool_parser_plugin

        if args.tool_parser_plugin:
            load_tool_parser_plugin(args.tool_parser_plugin)
        if args.tool_call_parser:
            get_tool_parser(args.tool_call_parser)  # ValueError naming the known parsers
    if args.reasoning_parser_plugin or args.reasoning_parser:
        from cserve.parsers.reasoning import get_reasoning_parser, load_reasoning_parser_plugin

        if args.reasoning_parser_plugin:
            load_reasoning_parser_plugin(args.reasoning_parser_plugin)
        if args.reasoning_parser:
            get_reasoning_parser(args.reasoning_parser)
    from cserve.structured.service import config_from_args

    config_from_args(args)  # --structured-outputs-config: ValueError naming a bad key or backend
    if args.enable_auto_tool_choice and not args.tool_call_parser:
        raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
