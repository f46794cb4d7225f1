"""Tool-call parsers under vLLM's names (`--tool-call-parser NAME`).

A parser turns one choice's output text, fed incrementally, into content and tool calls; the
same code serves non-streaming (feed the whole text, then finish) and streaming (many feeds,
then finish), so the two cannot disagree. See _base.py for the rules.
"""

from __future__ import annotations

from cserve.parsers import load_plugin_file

from ._base import Call, ToolCallDelta, ToolDelta, ToolParser, assemble
from .deepseek import DeepSeekV3ToolParser, DeepSeekV31ToolParser
from .glm45 import Glm45ToolParser
from .gptoss import OpenAIToolParser
from .hermes import HermesToolParser
from .internlm import InternLMToolParser
from .json_lists import (
    GraniteToolParser,
    JambaToolParser,
    Phi4MiniJsonToolParser,
    XlamToolParser,
)
from .kimi_k2 import KimiK2ToolParser
from .llama import Llama3JsonToolParser
from .minimax_m2 import MinimaxM2ToolParser
from .mistral import MistralToolParser
from .pythonic import Llama4PythonicToolParser, PythonicToolParser
from .qwen3 import Qwen3CoderToolParser, Qwen3XmlToolParser

__all__ = [
    "TOOL_PARSERS",
    "Call",
    "ToolCallDelta",
    "ToolDelta",
    "ToolParser",
    "assemble",
    "get_tool_parser",
    "load_tool_parser_plugin",
    "register_tool_parser",
]

TOOL_PARSERS: dict[str, type[ToolParser]] = {}


def register_tool_parser(name: str):
    """Class decorator: register a ToolParser subclass under `name` (also sets cls.name)."""

    def deco(cls: type[ToolParser]) -> type[ToolParser]:
        if not (isinstance(cls, type) and issubclass(cls, ToolParser)):
            raise TypeError(f"{cls!r} is not a ToolParser subclass")
        cls.name = name
        TOOL_PARSERS[name] = cls
        return cls

    return deco


for _cls in (
    HermesToolParser, Llama3JsonToolParser, PythonicToolParser, Llama4PythonicToolParser,
    MistralToolParser, Qwen3XmlToolParser, Qwen3CoderToolParser, XlamToolParser,
    Phi4MiniJsonToolParser, GraniteToolParser, InternLMToolParser, JambaToolParser,
    DeepSeekV3ToolParser, DeepSeekV31ToolParser, KimiK2ToolParser, Glm45ToolParser,
    MinimaxM2ToolParser, OpenAIToolParser,
):
    TOOL_PARSERS[_cls.name] = _cls


def get_tool_parser(name: str) -> type[ToolParser]:
    try:
        return TOOL_PARSERS[name]
    except KeyError:
        raise ValueError(
            f"unknown tool call parser {name!r}; choose one of: {', '.join(sorted(TOOL_PARSERS))}"
        ) from None


def load_tool_parser_plugin(path: str) -> None:
    """--tool-parser-plugin FILE: import a Python file whose parsers register themselves with
    @register_tool_parser("name")."""
    load_plugin_file(path, "tool parser")
