"""GLM-4.5 / 4.6: <think>...</think> that the model opens itself.

Without <think>, everything is content (thinking off: the template already closed an empty block);
text before <think> is content; an unfinished block is reasoning.
"""

from __future__ import annotations

from .base import ThinkReasoningParser, register_reasoning_parser


@register_reasoning_parser("glm45")
class Glm45ReasoningParser(ThinkReasoningParser):
    start_optional = False
