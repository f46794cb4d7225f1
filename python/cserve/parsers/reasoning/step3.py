"""Step3: no start marker; everything before the first </think> is reasoning."""

from __future__ import annotations

from .base import ThinkReasoningParser, register_reasoning_parser


@register_reasoning_parser("step3")
class Step3ReasoningParser(ThinkReasoningParser):
    start_token = None
