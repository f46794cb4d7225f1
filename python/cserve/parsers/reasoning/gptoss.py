"""gpt-oss (harmony format): ``openai_gptoss``.

The output is a run of messages, each ``[<|start|>assistant]<|channel|>CHANNEL[ to=RECIPIENT]
[<|constrain|>FORMAT]<|message|>BODY`` closed by ``<|end|>``, ``<|call|>`` or ``<|return|>``.
analysis bodies are reasoning (several are joined with "\\n"); final bodies, commentary preambles
and bodies without a channel are content. A message with a recipient (a tool call) goes to the
content verbatim, header and closing marker included, for the tool-call parser. Headers and the
other markers never appear in the output.
"""

from __future__ import annotations

import re

from .base import (
    CONTENT,
    HEADER,
    REASONING,
    MarkerReasoningParser,
    Mode,
    lit,
    register_reasoning_parser,
)

_STOPS = ("<|end|>", "<|call|>", "<|return|>")
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"\bto=\S")


@register_reasoning_parser("openai_gptoss")
class GptOssReasoningParser(MarkerReasoningParser):
    needs_special_tokens = True
    initial_mode = "out"

    def __init__(self, chat_template_kwargs: dict | None = None) -> None:
        self._analysis_count = 0
        super().__init__(chat_template_kwargs)

    def reasoning_end_marker(self) -> str | None:
        return "<|channel|>final<|message|>"  # the answer's header: the analysis is over

    def build_modes(self) -> dict[str, Mode]:
        opens = [lit("<|start|>", "header", keep=True), lit("<|channel|>", "header", keep=True)]
        drop_stops = [lit(s, "out") for s in _STOPS]
        return {
            # between messages: stray text is content, stray closers vanish
            "out": Mode(CONTENT, opens + drop_stops),
            "header": Mode(HEADER, [lit("<|message|>", "body")]),
            "analysis": Mode(REASONING, drop_stops + opens),
            "final": Mode(CONTENT, drop_stops + opens, ends_reasoning=True),
            "tool": Mode(CONTENT, [lit(s, "out", keep=True) for s in _STOPS] + opens, ends_reasoning=True),
        }

    def resolve(self, goto: str) -> str:
        if goto != "body":
            return goto
        if _RECIPIENT.search(self._header):
            return "tool"
        m = _CHANNEL.search(self._header)
        return "analysis" if m and m.group(1) == "analysis" else "final"

    def on_enter(self, mode: str, marker: str) -> None:
        if mode == "header":
            self._header = ""
        elif mode == "analysis":
            if self._analysis_count:
                self.emit(REASONING, "\n")
            self._analysis_count += 1
        elif mode == "tool":
            self.emit(CONTENT, self._header + marker)
