"""vLLM 0.15's status codes, messages and `param` for the common bad requests, which clients and
tests match on."""

from __future__ import annotations

import pytest

from tests.entrypoints.openai.conftest import MODEL_NAME

CHAT = [{"role": "user", "content": "Hello there"}]


def post(http, path: str, **body):
    defaults = {"model": MODEL_NAME, "max_tokens": 2}
    defaults.update({"prompt": "Hello"} if path == "/v1/completions" else {"messages": CHAT})
    return http.post(path, json={**defaults, **body})


def error(r, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize("body", [{"prompt": ""}, {"prompt": None}])
def test_empty_prompt(http, body):
    err = error(post(http, "/v1/completions", **body))
    assert "Either prompt or prompt_embeds must be provided and non-empty." in err["message"]
    assert err["param"] == "prompt"


def test_empty_prompt_list(http):
    err = error(post(http, "/v1/completions", prompt=[]))
    assert "please provide at least one prompt" in err["message"] and err["param"] == "prompt"


def test_prompt_of_no_tokens(http):
    err = error(post(http, "/v1/completions", prompt=["Hi", ""]))
    assert err["message"] == "The decoder prompt cannot be empty"


def test_large_seed(http):
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert error(post(http, path, seed=2**64))["param"] == "seed"
        assert post(http, path, seed=2**63 - 1).status_code == 200
        assert post(http, path, seed=-2**63).status_code == 200


def test_unknown_model(http):
    for path in ("/v1/completions", "/v1/chat/completions"):
        err = error(post(http, path, model="gpt-17"), 404)
        assert err == {"message": "The model `gpt-17` does not exist.", "type": "NotFoundError", "param": "model",
                       "code": 404}


def test_completion_prompt_too_long(http):
    ids = [5] * 250
    err = error(post(http, "/v1/completions", prompt=ids, max_tokens=16))
    assert err["message"] == ("This model's maximum context length is 240 tokens. However, your request has 250 input "
                              "tokens. Please reduce the length of the input messages. (parameter=input_tokens, "
                              "value=250)")
    assert err["param"] == "input_tokens"
    err = error(post(http, "/v1/completions", max_tokens=300))
    assert err["message"] == ("'max_tokens' (300) cannot be greater than the model's maximum context length (256). "
                              "(parameter=max_tokens, value=300)")
    err = error(post(http, "/v1/completions", prompt=[5] * 256, max_tokens=None))
    assert err["message"].startswith("The decoder prompt (length 256) plus the number of requested output tokens")


def test_chat_prompt_too_long(http):
    long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 40}]
    err = error(post(http, "/v1/chat/completions", messages=long))
    n = err["message"].split()[12]
    assert err["message"] == (f"This model's maximum context length is 256 tokens. However, your request has {n} "
                              "input tokens. Please reduce the length of the input messages. "
                              f"(parameter=input_tokens, value={n})")
    err = error(post(http, "/v1/chat/completions", max_tokens=300))
    assert err["message"].startswith("'max_tokens' or 'max_completion_tokens' is too large: 300. This model's "
                                     "maximum context length is 256 tokens and your request has ")
    assert err["param"] == "max_tokens"


@pytest.mark.parametrize("body, param, message", [
    ({"temperature": -1}, "temperature",
     "temperature must be non-negative, got -1.0. (parameter=temperature, value=-1.0)"),
    ({"top_p": 2}, "top_p", "top_p must be in (0, 1], got 2.0. (parameter=top_p, value=2.0)"),
    ({"top_p": 0}, "top_p", "top_p must be in (0, 1], got 0.0. (parameter=top_p, value=0.0)"),
    ({"top_k": -2}, "top_k", "top_k must be 0 (disable), or at least 1, got -2."),
    ({"min_p": 1.5}, "min_p", "min_p must be in [0, 1], got 1.5."),
    ({"presence_penalty": 3}, "presence_penalty", "presence_penalty must be in [-2, 2], got 3.0."),
    ({"frequency_penalty": -3}, "frequency_penalty", "frequency_penalty must be in [-2, 2], got -3.0."),
    ({"repetition_penalty": 0}, "repetition_penalty", "repetition_penalty must be greater than zero, got 0.0."),
    ({"n": 0}, "n", "n must be at least 1, got 0."),
    ({"min_tokens": 5}, "min_tokens", "min_tokens must be less than or equal to max_tokens=2, got 5."),
    ({"logprobs": 6}, "logprobs",
     "Requested sample logprobs of 6, which is greater than max allowed: 5 (parameter=logprobs, value=6)"),
    ({"logprobs": -1, "echo": False}, "logprobs", "`logprobs` must be a positive value. (parameter=logprobs, value=-1)"),
    ({"prompt_logprobs": 6}, "prompt_logprobs",
     "Requested prompt logprobs of 6, which is greater than max allowed: 5 (parameter=prompt_logprobs, value=6)"),
    ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs",
     "`prompt_logprobs` are not available when `stream=True`. (parameter=prompt_logprobs)"),
    ({"stream_options": {"include_usage": True}}, "stream_options",
     "Stream options can only be defined when `stream=True`. (parameter=stream_options)"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens",
     "truncate_prompt_tokens must be an integer >= 1 or -1, got 0 (parameter=truncate_prompt_tokens, value=0)"),
    ({"cache_salt": ""}, "cache_salt", "Parameter 'cache_salt' must be a non-empty string if provided."),
])
def test_sampling_values(http, body, param, message):
    err = error(post(http, "/v1/completions", **body))
    assert err == {"message": message, "type": "BadRequestError", "param": param, "code": 400}


def test_chat_specific_errors(http):
    err = error(post(http, "/v1/chat/completions", logprobs=True, top_logprobs=6))
    assert err["message"] == ("Requested sample logprobs of 6, which is greater than max allowed: 5 "
                              "(parameter=logprobs, value=6)")
    err = error(post(http, "/v1/chat/completions", top_logprobs=2))
    assert err["message"].startswith("when using `top_logprobs`, `logprobs` must be set to true.")
    assert err["param"] == "top_logprobs"
    err = error(post(http, "/v1/chat/completions", logprobs=True, top_logprobs=-2))
    assert err["message"].startswith("`top_logprobs` must be a positive value or -1.")
    err = error(post(http, "/v1/chat/completions", continue_final_message=True, add_generation_prompt=True))
    assert err["message"] == "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    err = error(post(http, "/v1/chat/completions", truncate_prompt_tokens=300))
    assert err["message"] == ("truncate_prompt_tokens value (300) is greater than max_model_len (256). Please, select "
                              "a smaller truncation size.")
