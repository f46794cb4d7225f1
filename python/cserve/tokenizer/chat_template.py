"""Chat templates rendered as transformers renders them: a sandboxed jinja2 environment
with trim_blocks / lstrip_blocks, `raise_exception`, and the tokenizer's special tokens."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Optional


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Optional[dict[str, str]] = None) -> None:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def strftime_now(fmt: str) -> str:
            return datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        self._template = env.from_string(source)
        self.source = source
        self.special_tokens = dict(special_tokens or {})

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               continue_final_message: bool = False, **kwargs: Any) -> str:
        if add_generation_prompt and continue_final_message:
            raise ValueError("continue_final_message and add_generation_prompt are not compatible")
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     **self.special_tokens, **kwargs)
        if continue_final_message:
            # Cut the text after the final message's content, so generation continues it.
            final = messages[-1].get("content")
            if isinstance(final, str) and final.strip() and final.strip() in text:
                text = text[: text.rindex(final.strip()) + len(final.strip())]
        return text


def _token_text(value: Any) -> Optional[str]:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def special_tokens_of(config: dict[str, Any]) -> dict[str, str]:
    """The special-token strings templates use (bos_token, ...) from tokenizer_config.json's fields."""
    return {name: _token_text(config.get(name)) or "" for name in ("bos_token", "eos_token", "unk_token", "pad_token")}


def _file_text(override: str) -> str:
    """The file's text when `override` names a file, else `override` itself (the template)."""
    try:
        path = Path(override)
        return path.read_text() if path.is_file() else override
    except OSError:  # e.g. a long template line is not a valid file name
        return override


def load_chat_template(model_dir: str, override: Optional[str] = None) -> Optional[ChatTemplate]:
    """The model's template (chat_template.jinja, or chat_template in tokenizer_config.json),
    or `override`: a file path or the template text itself. None when there is none."""
    directory = Path(model_dir)
    config: dict[str, Any] = {}
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
    special = special_tokens_of(config)
    if override is not None:
        source = _file_text(override)
        return ChatTemplate(source, special)
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return ChatTemplate(jinja_file.read_text(), special)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: take "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return ChatTemplate(template, special) if isinstance(template, str) else None
