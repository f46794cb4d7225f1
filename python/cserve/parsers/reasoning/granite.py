"""IBM Granite 3.x: plain-text markers. The output must open with "Here is my thought process:"
(or "Here's ..."); reasoning then runs to "Here is my response:" (or "Here's ..."), the rest is content.
An output that does not open with the thought-process marker is all content; one whose response
marker never comes is all reasoning."""

from __future__ import annotations

from .base import (
    CONTENT,
    REASONING,
    MarkerReasoningParser,
    Mode,
    lit,
    register_reasoning_parser,
)


@register_reasoning_parser("granite")
class GraniteReasoningParser(MarkerReasoningParser):
    def build_modes(self) -> dict[str, Mode]:
        return {
            "pre": Mode(CONTENT, [lit(f"{h} my thought process:", "think", anchored=True)
                                  for h in ("Here is", "Here's")]),
            "think": Mode(REASONING, [lit(f"{h} my response:", "content") for h in ("Here is", "Here's")]),
            "content": Mode(CONTENT, [], ends_reasoning=True),
        }
