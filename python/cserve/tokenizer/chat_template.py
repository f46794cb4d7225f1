"""Chat templates rendered as transformers renders them: a sandboxed jinja2 environment
with trim_blocks / lstrip_blocks, `raise_exception`, and the tokenizer's special tokens.

A template may come with a request (--trust-request-chat-template), so rendering is bounded:
a budget of operations (calls, attribute and item lookups, range items, string building), a
deadline, and a cap on the size of any string it builds or outputs. Past any of them the render
fails with a TemplateError instead of running away."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

MAX_RENDER_OPERATIONS = 5_000_000
MAX_RENDER_SECONDS = 10.0
MAX_RENDER_CHARS = 64 * 1024 * 1024


def _bounded_environment(**options):
    """An ImmutableSandboxedEnvironment whose renders are bounded (see the module docstring)."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    budget = threading.local()  # renders run on several threads at once

    def charge(n: int = 1) -> None:
        left = getattr(budget, "left", None)
        if left is None:
            return  # not inside render(): compiling, or a test calling the environment directly
        budget.left = left - n
        if budget.left < 0:
            raise TemplateError(f"the chat template took more than {MAX_RENDER_OPERATIONS} operations")
        budget.ticks += 1
        if budget.ticks % 1024 == 0 and time.monotonic() > budget.deadline:
            raise TemplateError(f"the chat template took longer than {MAX_RENDER_SECONDS:g} s to render")

    def check_size(value: Any) -> Any:
        if isinstance(value, (str, list, tuple)) and len(value) > MAX_RENDER_CHARS:
            raise TemplateError(f"the chat template built a value longer than {MAX_RENDER_CHARS} items")
        return value

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+"])

        def call_binop(self, context, operator, left, right):
            charge()
            if operator == "**" and isinstance(right, int) and abs(right) > 64 and \
                    isinstance(left, (int, float)) and abs(left) > 1:
                raise TemplateError("the chat template raised a number to too large a power")
            if operator == "*":
                for seq, count in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and \
                            len(seq) * max(count, 0) > MAX_RENDER_CHARS:
                        raise TemplateError(f"the chat template built a value longer than {MAX_RENDER_CHARS} items")
            return check_size(super().call_binop(context, operator, left, right))

        def call(self, context, obj, *args, **kwargs):
            charge()
            return check_size(super().call(context, obj, *args, **kwargs))

        def getattr(self, obj, attribute):
            charge()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            charge()
            return super().getitem(obj, argument)

    def bounded_range(*args):
        r = safe_range(*args)
        charge(len(r))  # each item is a loop turn
        return r

    def start() -> None:
        budget.left = MAX_RENDER_OPERATIONS
        budget.ticks = 0
        budget.deadline = time.monotonic() + MAX_RENDER_SECONDS

    def finish() -> None:
        budget.left = None

    env = Bounded(**options)
    env.globals["range"] = bounded_range
    return env, start, finish


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Optional[dict[str, str]] = None) -> None:
        from jinja2.exceptions import TemplateError

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def strftime_now(fmt: str) -> str:
            return datetime.now().strftime(fmt)

        env, self._start, self._finish = _bounded_environment(trim_blocks=True, lstrip_blocks=True,
                                                              extensions=["jinja2.ext.loopcontrols"])
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
        from jinja2.exceptions import TemplateError

        self._start()
        try:
            parts, size = [], 0
            for part in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                **self.special_tokens, **kwargs):
                size += len(part)
                if size > MAX_RENDER_CHARS:
                    raise TemplateError(f"the chat template produced more than {MAX_RENDER_CHARS} characters")
                parts.append(part)
        except RecursionError:
            raise TemplateError("the chat template recursed too deeply") from None
        finally:
            self._finish()
        text = "".join(parts)
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
