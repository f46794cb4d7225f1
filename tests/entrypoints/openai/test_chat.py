"""/v1/chat/completions: the model's chat template (checked against transformers), streamed
equals non-streamed, n, logprobs, content parts, and the chat-only request fields."""

from __future__ import annotations

import pytest

from tests.entrypoints.openai.conftest import MODEL_NAME

# The same tests against the server split across two ranks (-tp 2).
pytestmark = pytest.mark.parametrize("server", [1, 2], indirect=True, ids=["tp1", "tp2"])

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
GREEDY = dict(temperature=0.0, max_completion_tokens=20, extra_body={"ignore_eos": True, "return_token_ids": True})


def test_template_matches_transformers(chat_model_dir, http):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model_dir)
    want = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    got = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert got["tokens"] == tok(want, add_special_tokens=False)["input_ids"]


def test_chat_usage_and_role(client, http):
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, **GREEDY)
    assert out.object == "chat.completion" and out.model == MODEL_NAME
    msg = out.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    prompt_ids = http.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    assert out.usage.prompt_tokens == len(prompt_ids) == len(out.model_extra["prompt_token_ids"])
    assert out.usage.completion_tokens == 20 == len(out.choices[0].model_extra["token_ids"])


def test_chat_stream_equals_full(client):
    full = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, **GREEDY)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY)
    texts: dict[int, str] = {}
    roles = {}
    finish = {}
    chunks = list(stream)
    for chunk in chunks:
        for c in chunk.choices:
            if c.delta.role:
                roles[c.index] = c.delta.role
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert roles == {0: "assistant", 1: "assistant"}
    assert texts == {c.index: c.message.content for c in full.choices}
    assert finish == {0: "length", 1: "length"}
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 40


def test_chat_logprobs(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, logprobs=True, top_logprobs=2,
                                         **GREEDY)
    content = out.choices[0].logprobs.content
    assert len(content) == 20
    assert "".join(e.token for e in content) == out.choices[0].message.content
    for e in content:
        assert len(e.top_logprobs) == 2
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-5)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token


def test_content_parts_render_like_strings(client):
    parts = [MESSAGES[0], {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]
    a = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, **GREEDY)
    b = client.chat.completions.create(model=MODEL_NAME, messages=parts, **GREEDY)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_max_tokens_default_fills_the_context(client):
    out = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0.0,
                                         extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens + out.usage.completion_tokens == 256


def test_continue_final_message_and_echo(client, http):
    msgs = MESSAGES + [{"role": "assistant", "content": "The colour is"}]
    ids = http.post("/tokenize", json={"messages": msgs, "add_generation_prompt": False,
                                       "continue_final_message": True}).json()["tokens"]
    text = http.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert text.endswith("The colour is")
    out = client.chat.completions.create(model=MODEL_NAME, messages=msgs, temperature=0.0, max_tokens=4,
                                         extra_body={"add_generation_prompt": False, "continue_final_message": True,
                                                     "echo": True})
    assert out.choices[0].message.content.startswith("The colour is")
    assert out.usage.prompt_tokens == len(ids)


def test_chat_template_kwargs_reach_the_template(client, http):
    # The ChatML template ignores unknown kwargs; rendering must still succeed with them.
    r = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2,
                                                "chat_template_kwargs": {"enable_thinking": False}})
    assert r.status_code == 200, r.text


def test_untrusted_request_template_is_refused(http):
    r = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2,
                                                "chat_template": "{{ messages[0]['content'] }}"})
    assert r.status_code == 400
    assert "--trust-request-chat-template" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, needle", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "image_url"),
    ({"messages": []}, "messages"),
    ({"messages": [{"content": "no role"}]}, "role"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
     "tool"),
    ({"messages": MESSAGES, "top_logprobs": 2}, "logprobs"),
    ({"messages": MESSAGES, "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": MESSAGES, "guided_choice": []}, "guided_choice"),
    ({"messages": MESSAGES, "tool_choice": "required"}, "tools"),
])
def test_chat_bad_requests(http, body, needle):
    r = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
