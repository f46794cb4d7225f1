"""Tokenizers and chat templates."""

from cserve.tokenizer.chat_template import ChatTemplate, load_chat_template

__all__ = ["ChatTemplate", "load_chat_template"]
