"""MiniMax M2: ``minimax_m2`` splits <think>...</think> (the template opens <think>, so the output
usually starts inside the reasoning); ``minimax_m2_append_think`` leaves everything in the content
with ``<think>`` put back in front, for clients that parse the tags themselves."""

from __future__ import annotations

from .base import (
    CONTENT,
    IdentityReasoningParser,
    ThinkReasoningParser,
    register_reasoning_parser,
)


@register_reasoning_parser("minimax_m2")
class MiniMaxM2ReasoningParser(ThinkReasoningParser):
    pass


@register_reasoning_parser("minimax_m2_append_think")
class MiniMaxM2AppendThinkReasoningParser(IdentityReasoningParser):
    def __init__(self, chat_template_kwargs: dict | None = None) -> None:
        super().__init__(chat_template_kwargs)
        self._prefixed = False

    def _prefix(self) -> None:
        if not self._prefixed:
            self._prefixed = True
            self.emit(CONTENT, "<think>")

    def feed(self, text: str) -> tuple[str, str]:
        self._prefix()
        return super().feed(text)

    def finish(self) -> tuple[str, str]:
        self._prefix()
        return super().finish()
