"""The request bodies of the HTTP backends: what `openai`, `vllm` and `openai-chat` send, and
which chunk fields they read."""

from __future__ import annotations

import asyncio

import pytest

from cserve.bench.backends import (ChatBackend, CompletionsBackend, RequestInput, RequestSettings, VllmBackend,
                                   make_backend)

REQ = RequestInput("Hello", 5, 7, "id-1")


def backend(name: str, **settings):
    return make_backend(name, None, "127.0.0.1", 8000, None, {"x-extra": "1"},
                        RequestSettings("m", **settings))


def test_completions_bodies():
    openai = backend("openai", ignore_eos=True, extra_body={"temperature": 0.0, "top_k": 5})
    assert isinstance(openai, CompletionsBackend) and openai.url == "http://127.0.0.1:8000/v1/completions"
    assert openai.payload(REQ) == {"model": "m", "prompt": "Hello", "max_tokens": 7, "stream": True,
                                   "stream_options": {"include_usage": True}, "ignore_eos": True,
                                   "temperature": 0.0, "top_k": 5}
    vllm = backend("vllm", logprobs=2)
    assert isinstance(vllm, VllmBackend)
    body = vllm.payload(REQ)
    assert body["repetition_penalty"] == 1.0 and body["logprobs"] == 2 and "ignore_eos" not in body
    assert CompletionsBackend.chunk_text({"text": "ab"}) == "ab"
    assert openai.headers["x-extra"] == "1"
    for b in (openai, vllm):
        asyncio.run(b.close())


def test_chat_body_and_chunks():
    chat = backend("openai-chat", ignore_eos=True)
    assert isinstance(chat, ChatBackend) and chat.url.endswith("/v1/chat/completions")
    body = chat.payload(REQ)
    assert body["messages"] == [{"role": "user", "content": "Hello"}] and body["max_completion_tokens"] == 7
    assert ChatBackend.chunk_text({"delta": {"role": "assistant", "content": ""}}) in ("", None)  # not a token
    assert ChatBackend.chunk_text({"delta": {"content": "x"}}) == "x"
    assert ChatBackend.chunk_text({"delta": {"reasoning_content": "r"}}) == "r"
    custom = make_backend("openai-chat", "http://h:1/", "127.0.0.1", 8000, "/chat", {}, RequestSettings("m"))
    assert custom.url == "http://h:1/chat"
    asyncio.run(chat.close())
    asyncio.run(custom.close())
    with pytest.raises(ValueError, match="--backend"):
        make_backend("tgi", None, "h", 1, None, {}, RequestSettings("m"))
