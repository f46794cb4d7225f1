"""The tokenizer, chat template and tokenizer config of a model given as a directory
(tokenizer.json, tokenizer_config.json, chat_template.jinja) or as one GGUF file (built from
its tokenizer.ggml.* metadata, read by the C++ GGUF reader)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from cserve.tokenizer.chat_template import ChatTemplate, load_chat_template


def is_gguf(path: str) -> bool:
    return str(path).lower().endswith(".gguf") and Path(path).is_file()


@lru_cache(maxsize=4)
def _gguf_metadata(path: str) -> dict[str, Any]:
    from cserve import _core

    return _core.gguf_metadata(path)


def load_tokenizer(path: str):
    """A tokenizers.Tokenizer, or None when the model has no tokenizer."""
    from tokenizers import Tokenizer

    if is_gguf(path):
        from cserve.tokenizer.gguf_tokenizer import build_gguf_tokenizer

        return build_gguf_tokenizer(_gguf_metadata(str(path)))
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    return Tokenizer.from_file(str(file)) if file.is_file() else None


def load_template(path: str, override: Optional[str] = None) -> Optional[ChatTemplate]:
    if is_gguf(path):
        from cserve.tokenizer.gguf_tokenizer import load_gguf_chat_template

        return load_gguf_chat_template(_gguf_metadata(str(path)), override)
    return load_chat_template(path, override)


def tokenizer_config(path: str) -> dict[str, Any]:
    """tokenizer_config.json's fields (for /tokenizer_info); a GGUF's special tokens."""
    if is_gguf(path):
        from cserve.tokenizer.gguf_tokenizer import gguf_special_tokens

        return {"tokenizer_class": "PreTrainedTokenizerFast", **gguf_special_tokens(_gguf_metadata(str(path)))}
    file = Path(path) / "tokenizer_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}
