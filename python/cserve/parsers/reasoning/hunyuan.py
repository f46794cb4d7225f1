"""Hunyuan A13B: "<think>\\n" reasoning "\\n</think>\\n<answer>\\n" answer "\\n</answer>".

Text outside those blocks is content; the answer's closing marker is dropped and a later
"<think>\\n" opens a new block; an unfinished think block is reasoning.
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


@register_reasoning_parser("hunyuan_a13b")
class HunyuanA13BReasoningParser(MarkerReasoningParser):
    initial_mode = "idle"

    def build_modes(self) -> dict[str, Mode]:
        return {
            "idle": Mode(CONTENT, [lit("<think>\n", "think")]),
            "think": Mode(REASONING, [lit("\n</think>\n<answer>\n", "answer"),
                                      lit("</think>\n<answer>\n", "answer")]),
            "answer": Mode(CONTENT, [lit("\n</answer>", "idle")], ends_reasoning=True),
        }
