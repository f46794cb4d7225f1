"""DeepSeek: ``deepseek_r1`` (<think>...</think>, the template usually opens <think> itself) and
``deepseek_v3`` (R1's parsing when chat_template_kwargs ``thinking`` is on, else no reasoning)."""

from __future__ import annotations

from .base import ThinkReasoningParser, register_reasoning_parser


@register_reasoning_parser("deepseek_r1")
class DeepSeekR1ReasoningParser(ThinkReasoningParser):
    """Reasoning up to the first </think>; a <think> is dropped; no </think> means all reasoning."""


@register_reasoning_parser("deepseek_v3")
class DeepSeekV3ReasoningParser(ThinkReasoningParser):
    """DeepSeek V3.1+: thinking is opt-in (``thinking`` or ``enable_thinking``); off, all content."""

    thinking_switch = (("thinking", "enable_thinking"), False)
