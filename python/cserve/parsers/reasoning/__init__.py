"""Reasoning parsers under vLLM's ``--reasoning-parser`` names.

Each parser splits one request's output text into reasoning and content, incrementally::

    p = get_reasoning_parser("deepseek_r1")(chat_template_kwargs)
    r, c = p.feed(text)      # any number of times
    r2, c2 = p.finish()      # flush what was held back (a possible partial marker)

Streaming and non-streaming run the same code, so they cannot disagree.
"""

from __future__ import annotations

from . import (  # noqa: F401  (they register)
    deepseek,
    glm45,
    gptoss,
    granite,
    hunyuan,
    kimi_k2,
    minimax,
    mistral,
    qwen3,
    step3,
)
from .base import (
    REASONING_PARSERS,
    IdentityReasoningParser,
    MarkerReasoningParser,
    ReasoningParser,
    ThinkReasoningParser,
    get_reasoning_parser,
    load_reasoning_parser_plugin,
    register_reasoning_parser,
)

__all__ = [
    "REASONING_PARSERS",
    "IdentityReasoningParser",
    "MarkerReasoningParser",
    "ReasoningParser",
    "ThinkReasoningParser",
    "get_reasoning_parser",
    "load_reasoning_parser_plugin",
    "register_reasoning_parser",
]
