"""vLLM 0.15's request and response fields on /v1/completions and /v1/chat/completions: each
honoured as vLLM does, refused with a 400 naming it, or listed in the parity table (parity.py,
docs/serve.md) as having no effect here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cserve.entrypoints.openai import parity
from cserve.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from tests.entrypoints.openai.conftest import MODEL_NAME
from tests.helpers.server import ServerProcess

CHAT = [{"role": "user", "content": "Tell me about the quick brown fox."}]
DOCS = Path(__file__).resolve().parents[3] / "docs" / "serve.md"


@pytest.fixture(scope="module")
def flags_server(chat_model_dir, tmp_path_factory):
    """The server flags that change fields: --return-tokens-as-token-ids, --enable-force-include-usage."""
    flags = ["--return-tokens-as-token-ids", "--enable-force-include-usage", "--trust-request-chat-template"]
    with ServerProcess(chat_model_dir, "--served-model-name", MODEL_NAME, "--max-model-len", "256", *flags,
                       "--max-logprobs", "5", log_dir=tmp_path_factory.mktemp("logs")) as proc:
        proc.wait_ready()
        yield proc


@pytest.fixture
def flags_http(flags_server):
    with flags_server.client(timeout=60) as c:
        yield c


def sse(r) -> list[dict]:
    assert r.status_code == 200, r.text
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def completion(**kw) -> dict:
    return {"model": MODEL_NAME, "prompt": "The quick brown fox", "max_tokens": 4, "temperature": 0, **kw}


def chat(**kw) -> dict:
    return {"model": MODEL_NAME, "messages": CHAT, "max_tokens": 4, "temperature": 0, **kw}


# The parity table


def test_every_request_field_is_in_the_table():
    for model, endpoint in ((CompletionRequest, parity.COMPLETIONS), (ChatCompletionRequest, parity.CHAT)):
        for name in model.model_fields:
            assert name in parity.FIELDS_BY_NAME, f"{name} ({endpoint}) is missing from parity.REQUEST_FIELDS"
            assert parity.FIELDS_BY_NAME[name].endpoints in (parity.BOTH, endpoint), name
    for f in parity.REQUEST_FIELDS:
        models = {parity.BOTH: (CompletionRequest, ChatCompletionRequest), parity.COMPLETIONS: (CompletionRequest,),
                  parity.CHAT: (ChatCompletionRequest,)}[f.endpoints]
        assert all(f.name in m.model_fields for m in models), f"{f.name} is in the table but not a field"
        assert f.status in ("honoured", "refused", "no effect", "not applicable", "ignored"), f.status
        assert (f.status == "refused") == (f.example is not None), f.name


def test_doc_tables_are_generated_from_the_module():
    text = DOCS.read_text()
    assert parity.render_markdown() in text, "docs/serve.md is stale: python -m cserve.entrypoints.openai.parity"


REFUSED = [(f, ep) for f in parity.REQUEST_FIELDS if f.status == "refused"
           for ep in ((parity.COMPLETIONS, parity.CHAT) if f.endpoints == parity.BOTH else (f.endpoints,))]


@pytest.mark.parametrize("field, endpoint", REFUSED, ids=[f"{f.name}-{ep}" for f, ep in REFUSED])
def test_refused_fields_answer_400_naming_them(http, field, endpoint):
    body = completion() if endpoint == parity.COMPLETIONS else chat()
    body[field.name] = field.example
    r = http.post("/v1/completions" if endpoint == parity.COMPLETIONS else "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field.name and err["message"] == field.message and err["type"] == "BadRequestError"


def test_no_effect_fields_are_accepted(http):
    extra = {"user": "u", "length_penalty": 0.5, "vllm_xargs": {"a": 1}, "kv_transfer_params": {"x": 1},
             "use_beam_search": False, "logits_processors": [], "bad_words": []}
    r = http.post("/v1/chat/completions", json=chat(**extra, mm_processor_kwargs={}))
    assert r.status_code == 200, r.text
    extra.pop("bad_words")
    r = http.post("/v1/completions", json=completion(**extra))
    assert r.status_code == 200, r.text


# return_tokens_as_token_ids


def _ids_only(tokens) -> bool:
    return bool(tokens) and all(t.startswith("token_id:") and t[len("token_id:"):].isdigit() for t in tokens)


def test_return_tokens_as_token_ids_completions(http):
    body = completion(logprobs=2, return_tokens_as_token_ids=True, return_token_ids=True)
    out = http.post("/v1/completions", json=body).json()["choices"][0]
    lp = out["logprobs"]
    assert lp["tokens"] == [f"token_id:{t}" for t in out["token_ids"]]
    assert all(_ids_only(list(top)) for top in lp["top_logprobs"])
    chunks = sse(http.post("/v1/completions", json={**body, "stream": True}))
    tokens = [t for c in chunks for ch in c["choices"] if ch["logprobs"] for t in ch["logprobs"]["tokens"]]
    assert _ids_only(tokens) and len(tokens) == 4
    plain = http.post("/v1/completions", json=completion(logprobs=2)).json()["choices"][0]["logprobs"]["tokens"]
    assert not any(t.startswith("token_id:") for t in plain)


def test_return_tokens_as_token_ids_chat(http):
    body = chat(logprobs=True, top_logprobs=2, return_tokens_as_token_ids=True, return_token_ids=True)
    out = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = out["logprobs"]["content"]
    assert [c["token"] for c in content] == [f"token_id:{t}" for t in out["token_ids"]]
    assert all(_ids_only([t["token"] for t in c["top_logprobs"]]) for c in content)
    # bytes stay the token's text (as vLLM): the text of all tokens is the content
    assert b"".join(bytes(c["bytes"]) for c in content).decode() == out["message"]["content"]
    chunks = sse(http.post("/v1/chat/completions", json={**body, "stream": True}))
    tokens = [e["token"] for c in chunks for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]]
    assert _ids_only(tokens) and len(tokens) == 4


def test_return_tokens_as_token_ids_server_flag_and_override(flags_http):
    out = flags_http.post("/v1/completions", json=completion(logprobs=1, prompt_logprobs=1)).json()["choices"][0]
    assert _ids_only(out["logprobs"]["tokens"])
    # prompt_logprobs' decoded_token is the text, as vLLM's (the flag is about logprobs tokens)
    decoded = [v["decoded_token"] for pos in out["prompt_logprobs"][1:] for v in pos.values()]
    assert decoded and not any(d.startswith("token_id:") for d in decoded)
    out = flags_http.post("/v1/completions", json=completion(logprobs=1, return_tokens_as_token_ids=False)).json()
    assert not any(t.startswith("token_id:") for t in out["choices"][0]["logprobs"]["tokens"])
    out = flags_http.post("/v1/chat/completions", json=chat(logprobs=True)).json()
    assert _ids_only([c["token"] for c in out["choices"][0]["logprobs"]["content"]])


# truncation_side


def test_truncation_side(http):
    ids = list(range(20, 40))
    for side, kept in (("left", ids[-5:]), ("right", ids[:5]), (None, ids[-5:])):
        body = completion(prompt=ids, truncate_prompt_tokens=5, return_token_ids=True)
        if side:
            body["truncation_side"] = side
        out = http.post("/v1/completions", json=body).json()
        assert out["choices"][0]["prompt_token_ids"] == kept, side
    full = http.post("/v1/chat/completions", json=chat(return_token_ids=True)).json()["prompt_token_ids"]
    right = http.post("/v1/chat/completions", json=chat(return_token_ids=True, truncate_prompt_tokens=6,
                                                        truncation_side="right")).json()["prompt_token_ids"]
    assert right == full[:6]
    r = http.post("/v1/completions", json=completion(truncation_side="middle"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncation_side"


# Usage in streams


def test_stream_usage_only_where_vllm_sends_it(http):
    prompt = "Usage probe 7f3a: a prompt no other test sends."
    chunks = sse(http.post("/v1/chat/completions", json=chat(
        messages=[{"role": "user", "content": prompt}], stream=True, stream_options={"include_usage": True})))
    *body, last = chunks
    assert all("usage" not in c for c in body), body  # chat chunks carry only the fields set
    assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
    assert set(last["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}  # nothing cached
    chunks = sse(http.post("/v1/completions", json=completion(prompt=prompt, stream=True,
                                                              stream_options={"include_usage": True})))
    *body, last = chunks
    assert all(c["usage"] is None and "system_fingerprint" not in c for c in body)
    assert last == {k: last[k] for k in ("id", "object", "created", "model", "choices", "usage")}
    assert last["choices"] == [] and "prompt_tokens_details" not in last["usage"]
    # no stream_options: no usage anywhere
    chunks = sse(http.post("/v1/chat/completions", json=chat(stream=True)))
    assert all("usage" not in c for c in chunks)
    # an empty stream_options object without stream is accepted, as vLLM
    assert http.post("/v1/completions", json=completion(stream_options={})).status_code == 200


def test_continuous_usage_counts_each_choice(http):
    for path, body in (("/v1/completions", completion(n=2, max_tokens=3)), ("/v1/chat/completions", chat(n=2, max_tokens=3))):
        chunks = sse(http.post(path, json={**body, "stream": True, "temperature": 1.0, "seed": 1, "ignore_eos": True,
                                           "stream_options": {"include_usage": True, "continuous_usage_stats": True}}))
        seen: dict[int, int] = {}
        for c in chunks[:-1]:
            assert c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
            (choice,) = c["choices"]
            text = choice.get("text", (choice.get("delta") or {}).get("content"))
            if text and "role" not in choice.get("delta", {}):
                seen[choice["index"]] = seen.get(choice["index"], 0) + 1
                assert c["usage"]["completion_tokens"] == seen[choice["index"]], (path, c)
        assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_force_include_usage(flags_http):
    for path, body in (("/v1/completions", completion(stream=True)), ("/v1/chat/completions", chat(stream=True))):
        last = sse(flags_http.post(path, json=body))[-1]
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4
        last = sse(flags_http.post(path, json={**body, "stream_options": {"include_usage": False}}))[-1]
        assert last["choices"] == [] and "usage" in last


def test_cached_tokens_only_when_some(http):
    prompt = "Cache probe 91c2: " + "the quick brown fox jumps over the lazy dog " * 4
    first = http.post("/v1/completions", json=completion(prompt=prompt)).json()["usage"]
    assert first["prompt_tokens_details"] is None
    second = http.post("/v1/completions", json=completion(prompt=prompt)).json()["usage"]
    assert second["prompt_tokens_details"]["cached_tokens"] >= 16


# Response shapes


def test_response_fields(http):
    out = http.post("/v1/completions", json=completion()).json()
    assert list(out) == ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
                         "kv_transfer_params"]
    assert set(out["choices"][0]) == {"index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids",
                                      "prompt_logprobs", "prompt_token_ids"}
    out = http.post("/v1/chat/completions", json=chat(logprobs=True, top_logprobs=2)).json()
    assert list(out) == ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
                         "prompt_logprobs", "prompt_token_ids", "kv_transfer_params"]
    message = out["choices"][0]["message"]
    assert set(message) == {"role", "content", "refusal", "annotations", "audio", "function_call", "tool_calls",
                            "reasoning", "reasoning_content"}
    for entry in out["choices"][0]["logprobs"]["content"]:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"} and len(entry["top_logprobs"]) == 2
        assert all(set(t) == {"token", "logprob", "bytes"} for t in entry["top_logprobs"])


def test_stream_chunk_shapes(http):
    chunks = sse(http.post("/v1/chat/completions", json=chat(stream=True, echo=True, messages=[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], add_generation_prompt=False,
        continue_final_message=True)))
    first = chunks[0]
    assert first["object"] == "chat.completion.chunk" and first["prompt_token_ids"] is None
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "reasoning_content": None}
    assert chunks[1]["choices"][0]["delta"]["content"] == "Hello"  # the echo, in its own chunk
    assert "stop_reason" in chunks[-1]["choices"][0] and chunks[-1]["choices"][0]["finish_reason"] == "length"
    chunks = sse(http.post("/v1/completions", json=completion(stream=True, echo=True, logprobs=1)))
    assert chunks[0]["choices"][0]["text"].startswith("The quick brown fox")
    offsets = chunks[0]["choices"][0]["logprobs"]["text_offset"]
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_echo_with_logprobs_returns_prompt_logprobs(http):
    out = http.post("/v1/completions", json=completion(echo=True, logprobs=1)).json()["choices"][0]
    assert out["prompt_logprobs"][0] is None and len(out["prompt_logprobs"]) > 1


def test_stop_reason(http):
    out = http.post("/v1/completions", json=completion(max_tokens=12)).json()["choices"][0]
    text, ids = out["text"], None
    stop = text[2:4]
    out = http.post("/v1/completions", json=completion(max_tokens=12, stop=[stop])).json()["choices"][0]
    assert out["finish_reason"] == "stop" and out["stop_reason"] == stop
    ids = http.post("/v1/completions", json=completion(max_tokens=12, return_token_ids=True)).json()
    tid = ids["choices"][0]["token_ids"][3]
    out = http.post("/v1/completions", json=completion(max_tokens=12, stop_token_ids=[tid])).json()["choices"][0]
    assert out["finish_reason"] == "stop" and out["stop_reason"] == tid
    out = http.post("/v1/completions", json=completion(max_tokens=2)).json()["choices"][0]
    assert out["finish_reason"] == "length" and out["stop_reason"] is None


def test_reasoning_effort_reaches_the_template(flags_http):
    template = "{{ reasoning_effort }}:{% for m in messages %}{{ m['content'] }}{% endfor %}"
    out = flags_http.post("/v1/chat/completions", json=chat(chat_template=template, reasoning_effort="high",
                                                             return_token_ids=True)).json()
    expected = flags_http.post("/tokenize", json={"prompt": "high:" + CHAT[0]["content"],
                                                  "add_special_tokens": False}).json()["tokens"]
    assert out["prompt_token_ids"] == expected


def test_request_id_names_the_response_as_vllm(http):
    """The body's request_id gives the response id when no X-Request-Id header is sent."""
    assert http.post("/v1/completions", json=completion(request_id="abc-123")).json()["id"] == "cmpl-abc-123"
    assert http.post("/v1/chat/completions", json=chat(request_id="q7")).json()["id"] == "chatcmpl-q7"
    r = http.post("/v1/completions", json=completion(request_id="abc-123"), headers={"X-Request-Id": "from-header"})
    assert r.json()["id"] == "cmpl-from-header"


def test_echo_with_max_tokens_0_is_the_prompt_alone(http):
    """vLLM's scoring idiom: echo, max_tokens 0, logprobs: the prompt and its logprobs, no output."""
    prompt = "The quick brown fox"
    body = completion(prompt=prompt, echo=True, max_tokens=0, logprobs=1)
    full = http.post("/v1/completions", json=body).json()
    c = full["choices"][0]
    assert c["text"] == prompt
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == prompt and lp["token_logprobs"][0] is None
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"][1:])
    streamed = sse(http.post("/v1/completions", json={**body, "stream": True}))
    text = "".join(ch["choices"][0]["text"] for ch in streamed if ch["choices"])
    assert text == prompt
    assert streamed[0]["choices"][0]["logprobs"]["tokens"] == lp["tokens"]
    r = http.post("/v1/completions", json=completion(max_tokens=0))
    assert r.status_code == 400 and "max_tokens must be at least 1, got 0." in r.json()["error"]["message"]


def test_the_flags_the_parity_table_names_agree_with_the_flag_table():
    """A field honoured with a server flag needs that flag supported; a field refused or not
    applicable "without" a flag needs that flag refused too (else the two tables disagree)."""
    import re

    from cserve.cli.flags import FLAGS, SUPPORTED

    by_name = {name: f for f in FLAGS for name in (f.name, *f.aliases)}
    notes = [(f.status, f.note) for f in parity.REQUEST_FIELDS] + [("honoured", f.note) for f in parity.RESPONSE_FIELDS]
    named = 0
    for status, note in notes:
        for flag in re.findall(r"--[a-z][a-z0-9-]*", note):
            assert flag in by_name, f"{flag} (parity table) is not in the flag table"
            supported = by_name[flag].support == SUPPORTED
            assert supported == (status not in ("refused", "not applicable")), (flag, status, note)
            named += 1
    assert named >= 8
