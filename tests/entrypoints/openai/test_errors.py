"""Bad input gets an OpenAI error body with the right status, never a 500 or a stack trace."""

from __future__ import annotations

import openai
import pytest

from tests.entrypoints.openai.conftest import MODEL_NAME


@pytest.mark.parametrize("body, param", [
    ({"temperature": -1}, None),
    ({"top_p": 2}, None),
    ({"n": 0}, "n"),
    ({"logprobs": 6}, None),  # over --max-logprobs 5
    ({"max_tokens": "many"}, "max_tokens"),
    ({"prompt": None}, "prompt"),
    ({"stop": [""]}, None),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"prompt": [10**7]}, None),  # token id out of vocabulary
    ({"prompt": []}, "prompt"),
    ({"suffix": "x"}, "suffix"),
    ({"priority": 3}, "priority"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_bad_parameters_are_400(http, body, param):
    r = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and err["message"]
    if param:
        assert param in (err["param"] or "") or param in err["message"]
    assert "Traceback" not in r.text


def test_malformed_bodies(http):
    for raw in (b"{not json", b"[1, 2]", b""):
        r = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == 400


def test_prompt_longer_than_context(client, http):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 60
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=1)
    n = len(http.post("/tokenize", json={"prompt": long_prompt}).json()["tokens"])
    # vLLM's wording: for completions the context left after max_tokens (256 - 1)
    assert "maximum context length is 255 tokens" in str(e.value) and f"{n} input tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=300)
    assert "'max_tokens' (300) cannot be greater than the model's maximum context length (256)" in str(e.value)


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-17", prompt="Hi", max_tokens=1)
    assert "gpt-17" in str(e.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])


def test_unknown_route_and_method(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == 404
    r = http.get("/v1/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == 405


def test_server_still_healthy_after_errors(client):
    out = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
    assert out.choices[0].text is not None


def test_too_many_headers_is_431(http):
    headers = {f"x-extra-{i}": "1" for i in range(300)}  # over --h11-max-header-count's 256
    r = http.get("/health", headers=headers)
    assert r.status_code == 431 and r.json()["error"]["code"] == 431
