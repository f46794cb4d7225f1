"""/v1/completions through the official openai client: streamed equals non-streamed, n, echo,
logprobs, stop strings across token boundaries, exact usage, batched and token-id prompts."""

from __future__ import annotations

import pytest

from tests.entrypoints.openai.conftest import MODEL_NAME

# The same tests against the server split across two ranks (-tp 2).
pytestmark = pytest.mark.parametrize("server", [1, 2], indirect=True, ids=["tp1", "tp2"])

PROMPT = "The quick brown fox"
GREEDY = dict(temperature=0.0, max_tokens=24, extra_body={"ignore_eos": True, "return_token_ids": True})


def tokenize(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def stream_text(client, **kw) -> tuple[dict[int, str], dict[int, str], list]:
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    chunks = list(client.completions.create(model=MODEL_NAME, stream=True, **kw))
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    return texts, reasons, chunks


def test_greedy_completion_usage_is_exact(client, http):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, **GREEDY)
    assert out.model == MODEL_NAME and out.object == "text_completion"
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    assert len(choice.token_ids) == 24
    assert out.usage.prompt_tokens == len(tokenize(http, PROMPT)) == len(choice.prompt_token_ids)
    assert out.usage.completion_tokens == 24 and out.usage.total_tokens == out.usage.prompt_tokens + 24
    detok = http.post("/detokenize", json={"tokens": choice.token_ids}).json()["prompt"]
    assert choice.text == detok


def test_streamed_text_equals_non_streamed(client):
    full = client.completions.create(model=MODEL_NAME, prompt=PROMPT, **GREEDY)
    texts, reasons, chunks = stream_text(client, prompt=PROMPT, stream_options={"include_usage": True}, **GREEDY)
    assert texts[0] == full.choices[0].text
    assert reasons[0] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_with_seed_stream_and_full_agree(client):
    kw = dict(prompt=PROMPT, n=3, temperature=1.0, seed=7, max_tokens=12, extra_body={"ignore_eos": True})
    full = client.completions.create(model=MODEL_NAME, **kw)
    assert sorted(c.index for c in full.choices) == [0, 1, 2]
    assert full.usage.completion_tokens == 36
    texts, _, _ = stream_text(client, **kw)
    assert texts == {c.index: c.text for c in full.choices}
    assert len({c.text for c in full.choices}) > 1  # the completions use different seeds


def test_logprobs(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, logprobs=3, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 24
    assert "".join(lp.tokens) == out.choices[0].text
    for token, value, tops in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and 3 <= len(tops) <= 4
        assert value == pytest.approx(max(tops.values()), abs=1e-5)  # greedy picks the most likely token
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_stop_string_across_token_boundary(client):
    base = client.completions.create(model=MODEL_NAME, prompt=PROMPT, logprobs=0, **GREEDY)
    tokens = base.choices[0].logprobs.tokens
    text = base.choices[0].text
    # A stop string made of the end of one token and the start of the next.
    k = next(i for i in range(2, len(tokens) - 1) if tokens[i] and tokens[i + 1])
    stop = tokens[k][-1] + tokens[k + 1][0]
    cut = text.find(stop)
    for include in (False, True):
        extra = dict(GREEDY["extra_body"], include_stop_str_in_output=include)
        kw = dict(prompt=PROMPT, temperature=0.0, max_tokens=24, stop=[stop], extra_body=extra)
        out = client.completions.create(model=MODEL_NAME, **kw)
        want = text[: cut + len(stop)] if include else text[:cut]
        assert out.choices[0].text == want
        assert out.choices[0].finish_reason == "stop"
        assert out.choices[0].model_extra["stop_reason"] == stop
        texts, reasons, _ = stream_text(client, **kw)
        assert texts[0] == want and reasons[0] == "stop"


def test_stop_token_ids(client):
    base = client.completions.create(model=MODEL_NAME, prompt=PROMPT, **GREEDY)
    ids = base.choices[0].token_ids
    stop_id = ids[5]
    first = ids.index(stop_id)
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, temperature=0.0, max_tokens=24,
                                    extra_body={"ignore_eos": True, "return_token_ids": True,
                                                "stop_token_ids": [stop_id]})
    assert out.choices[0].finish_reason == "stop"
    assert out.choices[0].model_extra["stop_reason"] == stop_id
    assert out.choices[0].token_ids == ids[: first + 1]


def test_echo_and_batched_prompts(client, http):
    prompts = [PROMPT, "Hello world"]
    out = client.completions.create(model=MODEL_NAME, prompt=prompts, n=2, echo=True, **GREEDY)
    assert [c.index for c in sorted(out.choices, key=lambda c: c.index)] == [0, 1, 2, 3]
    by_index = {c.index: c for c in out.choices}
    assert by_index[0].text.startswith(PROMPT) and by_index[2].text.startswith("Hello world")
    assert by_index[0].text == by_index[1].text  # greedy: both completions agree
    assert out.usage.prompt_tokens == sum(len(tokenize(http, p)) for p in prompts)
    assert out.usage.completion_tokens == 4 * 24


def test_token_id_prompt_equals_text_prompt(client, http):
    ids = tokenize(http, PROMPT)
    by_text = client.completions.create(model=MODEL_NAME, prompt=PROMPT, **GREEDY)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, **GREEDY)
    batch = client.completions.create(model=MODEL_NAME, prompt=[ids, ids], **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert all(c.text == by_text.choices[0].text for c in batch.choices)


def test_echo_with_logprobs_includes_prompt_tokens(client, http):
    ids = tokenize(http, PROMPT)
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, echo=True, logprobs=1, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 24
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens[:len(ids)]) == PROMPT and lp.text_offset[len(ids)] == len(PROMPT)


def test_prompt_logprobs_and_truncation(client, http):
    ids = tokenize(http, PROMPT)
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2,
                                    extra_body={"prompt_logprobs": 2})
    plp = out.choices[0].model_extra["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    assert all(2 <= len(pos) <= 3 for pos in plp[1:])
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2,
                                    extra_body={"truncate_prompt_tokens": 2})
    assert out.usage.prompt_tokens == 2


def test_continuous_usage_stats(client):
    chunks = list(client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, stream=True, temperature=0.0, max_tokens=8,
        stream_options={"include_usage": True, "continuous_usage_stats": True}, extra_body={"ignore_eos": True}))
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 8
    assert all(c.usage.prompt_tokens == chunks[0].usage.prompt_tokens for c in chunks)


def test_cached_tokens_reported(client):
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)
    client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
    out = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1)
    assert out.usage.prompt_tokens_details.cached_tokens >= 16


def test_generation_config_defaults_apply(client):
    # The model's generation_config.json says temperature 0.7: a request without one samples at 0.7.
    kw = dict(prompt=PROMPT, max_tokens=16, seed=3, extra_body={"ignore_eos": True})
    default = client.completions.create(model=MODEL_NAME, **kw).choices[0].text
    explicit = client.completions.create(model=MODEL_NAME, temperature=0.7, **kw).choices[0].text
    hot = client.completions.create(model=MODEL_NAME, temperature=1.5, **kw).choices[0].text
    assert default == explicit
    assert default != hot


def test_vllm_sampling_extras_accepted(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, seed=1, extra_body={
        "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.2, "min_tokens": 6, "ignore_eos": False,
        "skip_special_tokens": False, "spaces_between_special_tokens": True, "priority": 0})
    assert out.usage.completion_tokens == 6
