"""Kimi K2 (thinking models): <think>...</think>, the <think> optional and recognised only at the very
start; ``<|tool_calls_section_begin|>`` also ends the reasoning and stays in the content.
chat_template_kwargs ``thinking=False``: no reasoning, all content."""

from __future__ import annotations

from .base import Literal, ThinkReasoningParser, register_reasoning_parser


@register_reasoning_parser("kimi_k2")
class KimiK2ReasoningParser(ThinkReasoningParser):
    needs_special_tokens = True  # <|tool_calls_section_begin|> is a special token
    start_anchored = True
    implicit_ends = (Literal("<|tool_calls_section_begin|>"),)
    thinking_switch = (("thinking",), True)
