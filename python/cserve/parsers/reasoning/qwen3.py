"""Qwen3 / Qwen3.5: <think>...</think>; the chat template may open <think> itself.

``enable_thinking=False`` in chat_template_kwargs: no reasoning, all content. A ``<tool_call>``
followed by ``<function=`` inside the reasoning ends it implicitly (Qwen3.5 calls tools without
closing </think>); the tool call stays at the head of the content.
"""

from __future__ import annotations

from .base import Lookahead, ThinkReasoningParser, register_reasoning_parser


@register_reasoning_parser("qwen3")
class Qwen3ReasoningParser(ThinkReasoningParser):
    thinking_switch = (("enable_thinking",), True)
    implicit_ends = (Lookahead("<tool_call>", "<function", " \t\r\n="),)
