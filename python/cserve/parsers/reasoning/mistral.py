"""Mistral (Magistral): [THINK]...[/THINK], control tokens the model emits itself.

Text before [THINK] is content; without [THINK] everything is content (a stray [/THINK] is dropped);
an unfinished [THINK] block is reasoning; after [/THINK] everything is content.
"""

from __future__ import annotations

from .base import (
    CONTENT,
    REASONING,
    MarkerReasoningParser,
    Mode,
    lit,
    register_reasoning_parser,
)


@register_reasoning_parser("mistral")
class MistralReasoningParser(MarkerReasoningParser):
    needs_special_tokens = True

    def reasoning_end_marker(self) -> str | None:
        return "[/THINK]"

    def build_modes(self) -> dict[str, Mode]:
        return {
            "pre": Mode(CONTENT, [lit("[THINK]", "think"), lit("[/THINK]", "pre")]),
            "think": Mode(REASONING, [lit("[/THINK]", "content")]),
            "content": Mode(CONTENT, [], ends_reasoning=True),
        }
