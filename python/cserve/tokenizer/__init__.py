"""Tokenizers and chat templates."""

from cserve.tokenizer.chat_template import ChatTemplate, load_chat_template
from cserve.tokenizer.gguf_tokenizer import (
    build_gguf_tokenizer,
    gguf_chat_template,
    gguf_special_tokens,
    load_gguf_chat_template,
)

__all__ = [
    "ChatTemplate",
    "build_gguf_tokenizer",
    "gguf_chat_template",
    "gguf_special_tokens",
    "load_chat_template",
    "load_gguf_chat_template",
]
