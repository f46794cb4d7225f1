"""SGLang's POST /generate on a real server: text and token-id prompts, batches, n, stop strings
and stop tokens, finish reasons, logprobs, streaming (the whole text so far in every event),
SGLang's error bodies, and every request released afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.entrypoints.sglang.conftest import MODEL_NAME
from tests.helpers.server import ServerProcess, wait_idle

PROMPT = "The quick brown fox"
GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def generate(http: httpx.Client, **body) -> dict:
    r = http.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def events(http: httpx.Client, **body) -> list:
    """The JSON events of a streamed /generate, which must end with [DONE]."""
    with http.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_text_prompt_has_sglangs_shape_and_completions_counts(http):
    out = generate(http, text=PROMPT, sampling_params=GREEDY, rid="r1")
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["id"] == "r1"
    assert meta["finish_reason"] == {"type": "length", "length": 12}
    assert meta["completion_tokens"] == len(out["output_ids"]) == 12
    assert meta["weight_version"] == "default" and meta["e2e_latency"] > 0 and meta["cached_tokens"] >= 0
    ref = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 12,
                                             "temperature": 0, "ignore_eos": True, "return_token_ids": True}).json()
    assert meta["prompt_tokens"] == ref["usage"]["prompt_tokens"]
    assert meta["completion_tokens"] == ref["usage"]["completion_tokens"]
    assert out["text"] == ref["choices"][0]["text"] and out["output_ids"] == ref["choices"][0]["token_ids"]


def test_input_ids_prompt_matches_the_text_prompt(http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_text = generate(http, text=PROMPT, sampling_params=GREEDY)
    by_ids = generate(http, input_ids=ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == by_text["output_ids"] and by_ids["text"] == by_text["text"]
    assert by_ids["meta_info"]["prompt_tokens"] == len(ids)


def test_default_max_new_tokens_is_sglangs_128_within_the_context(http):
    out = generate(http, text=PROMPT, sampling_params={"temperature": 0, "ignore_eos": True})
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 128}
    long_ids = [5] * 200  # 56 tokens of context left: the default shrinks to fit
    out = generate(http, input_ids=long_ids, sampling_params={"temperature": 0, "ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == 56


def test_batches_and_n_give_a_list_in_order(http):
    texts = [PROMPT, "Hello world"]
    single = [generate(http, text=t, sampling_params=GREEDY) for t in texts]
    batch = generate(http, text=texts, sampling_params=GREEDY, rid=["a", "b"])
    assert [o["meta_info"]["id"] for o in batch] == ["a", "b"]
    assert [o["output_ids"] for o in batch] == [o["output_ids"] for o in single]
    per_prompt = generate(http, text=texts, sampling_params=[{**GREEDY, "max_new_tokens": 3}, GREEDY])
    assert [o["meta_info"]["completion_tokens"] for o in per_prompt] == [3, 12]
    sampled = generate(http, text=texts, rid="x", sampling_params={"n": 2, "max_new_tokens": 4, "ignore_eos": True,
                                                                   "temperature": 1.0, "sampling_seed": 1})
    assert len(sampled) == 4 and [o["meta_info"]["id"] for o in sampled] == ["x_0", "x_1", "x_2", "x_3"]
    assert all(o["meta_info"]["completion_tokens"] == 4 for o in sampled)
    assert sampled[0]["meta_info"]["prompt_tokens"] == single[0]["meta_info"]["prompt_tokens"]
    assert sampled[2]["meta_info"]["prompt_tokens"] == single[1]["meta_info"]["prompt_tokens"]
    one = generate(http, text=PROMPT, sampling_params={**GREEDY, "n": 2})
    assert isinstance(one, list) and len(one) == 2 and one[0]["output_ids"] == one[1]["output_ids"]


def test_stop_string_and_stop_token_finish_reasons(http):
    full = generate(http, text=PROMPT, sampling_params={**GREEDY, "max_new_tokens": 20})
    stop = full["text"][6:8]
    cut = full["text"].find(stop)
    out = generate(http, text=PROMPT, sampling_params={**GREEDY, "max_new_tokens": 20, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == full["text"][:cut]
    assert out["meta_info"]["completion_tokens"] == len(out["output_ids"]) < 20
    kept = generate(http, text=PROMPT, sampling_params={**GREEDY, "max_new_tokens": 20, "stop": stop,
                                                        "no_stop_trim": True})
    assert kept["text"] == full["text"][:cut + len(stop)]
    token = full["output_ids"][5]
    first = full["output_ids"].index(token)
    out = generate(http, text=PROMPT, sampling_params={**GREEDY, "max_new_tokens": 20, "stop_token_ids": [token]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": token}
    assert out["output_ids"] == full["output_ids"][:first + 1]
    # EOS (id 2, forced by logit_bias) is reported as the matched token, as SGLang does.
    out = generate(http, text=PROMPT, sampling_params={"max_new_tokens": 5, "logit_bias": {"2": 100}})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": 2}
    assert out["output_ids"] == [2] and out["text"] == ""


def test_logprobs_in_sglangs_shape(http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    out = generate(http, input_ids=ids, sampling_params=GREEDY, return_logprob=True, top_logprobs_num=2,
                   logprob_start_len=0, return_text_in_logprobs=True)
    meta = out["meta_info"]
    inp, outp = meta["input_token_logprobs"], meta["output_token_logprobs"]
    assert [e[1] for e in inp] == ids and inp[0][0] is None and all(e[0] <= 0 for e in inp[1:])
    assert [e[1] for e in outp] == out["output_ids"] and all(isinstance(e[2], str) for e in outp)
    assert len(meta["output_top_logprobs"]) == 12 and all(len(t) == 2 for t in meta["output_top_logprobs"])
    assert meta["input_top_logprobs"][0] is None and len(meta["input_top_logprobs"]) == len(ids)
    # Greedy: the chosen token is the most likely one.
    assert all(top[0][1] == e[1] for top, e in zip(meta["output_top_logprobs"], outp))
    ref = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": ids, "max_tokens": 12, "temperature": 0,
                                             "ignore_eos": True, "logprobs": 0}).json()
    assert [e[0] for e in outp] == pytest.approx(ref["choices"][0]["logprobs"]["token_logprobs"], abs=1e-5)
    # By default (logprob_start_len -1) only the last prompt token has an input logprob; no text.
    out = generate(http, input_ids=ids, sampling_params=GREEDY, return_logprob=True)
    assert [e[1] for e in out["meta_info"]["input_token_logprobs"]] == ids[-1:]
    assert out["meta_info"]["output_token_logprobs"][0][2] is None and "output_top_logprobs" not in out["meta_info"]


def test_stream_sends_the_whole_text_so_far_then_done(http):
    full = generate(http, text=PROMPT, sampling_params=GREEDY)
    evs = events(http, text=PROMPT, sampling_params=GREEDY)
    assert len(evs) >= 2 and all("index" not in e for e in evs)
    for before, after in zip(evs, evs[1:]):
        assert after["text"].startswith(before["text"])
        assert after["output_ids"][:len(before["output_ids"])] == before["output_ids"]
        assert before["meta_info"]["finish_reason"] is None
    last = evs[-1]
    assert last["text"] == full["text"] and last["output_ids"] == full["output_ids"]
    assert last["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    assert last["meta_info"]["completion_tokens"] == 12


def test_stream_of_a_batch_tags_each_event_with_its_index(http):
    texts = [PROMPT, "Hello world"]
    full = generate(http, text=texts, sampling_params={**GREEDY, "n": 2})
    evs = events(http, text=texts, sampling_params={**GREEDY, "n": 2})
    last = {}
    for e in evs:
        last[e["index"]] = e
    assert sorted(last) == [0, 1, 2, 3]
    assert [last[i]["text"] for i in range(4)] == [o["text"] for o in full]
    assert all(last[i]["meta_info"]["finish_reason"]["type"] == "length" for i in range(4))


@pytest.mark.parametrize("body, where", [
    ({"text": PROMPT, "input_ids": [1, 2]}, "text"),
    ({}, "text"),
    ({"text": PROMPT, "sampling_params": {"json_schema": "{not json"}}, "json grammar"),
    ({"text": PROMPT, "sampling_params": {"regex": "a(b"}}, "regex grammar"),
    ({"text": PROMPT, "sampling_params": {"ebnf": "root ::= nothing"}}, "ebnf grammar"),
    ({"text": PROMPT, "sampling_params": {"stop_regex": "a+"}}, "stop_regex"),
    ({"text": PROMPT, "image_data": "http://x/y.png"}, "image_data"),
    ({"text": PROMPT, "token_ids_logprob": [1]}, "token_ids_logprob"),
    ({"text": PROMPT, "sampling_params": {"max_new_tokens": 1000}}, "context length"),
    ({"text": PROMPT, "sampling_params": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({"text": PROMPT, "sampling_params": {"n": 0}}, "n must be"),
    ({"text": PROMPT, "sampling_params": {"n": 9}}, "max_running_requests"),
    ({"text": PROMPT, "sampling_params": {"top_p": 2}}, "top_p"),
    ({"text": PROMPT, "sampling_params": {"temperature": "hot"}}, "temperature"),
    ({"text": PROMPT, "return_logprob": True, "top_logprobs_num": 6}, "logprobs"),
    ({"text": PROMPT, "return_logprob": True, "logprob_start_len": 99}, "logprob_start_len"),
    ({"text": [PROMPT, PROMPT], "rid": ["a"]}, "rid"),
    ({"text": [PROMPT, PROMPT], "sampling_params": [{}]}, "sampling_params"),
    ({"text": [PROMPT, PROMPT], "sampling_params": [{"n": 1}, {"n": 2}]}, "same"),
    ({"input_ids": [10**6]}, "vocab"),
    ({"input_ids": [1] * 300}, "context length"),
    ({"text": ""}, "empty"),
])
def test_bad_requests_are_400_with_an_error_message(http, body, where):
    r = http.post("/generate", json=body)
    assert r.status_code == 400, r.text
    assert where in r.json()["error"]["message"]


def test_bad_json_and_router_fields(http):
    r = http.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    # Fields routers add with their default values are accepted (unknown ones are ignored).
    out = generate(http, text=PROMPT, sampling_params={**GREEDY, "no_stop_trim": False, "stream_interval": 1},
                   return_hidden_states=False, log_metrics=True, return_logprob=False, logprob_start_len=-1,
                   top_logprobs_num=0, stream=False, data_parallel_rank=None, modalities=[], separate_reasoning=True)
    assert out["meta_info"]["completion_tokens"] == 12
    r = http.post("/generate", json={"text": PROMPT, "stream": True, "sampling_params": {"regex": "a(b"}})
    assert r.status_code == 400  # refused before the stream starts


def test_a_client_that_leaves_mid_stream_frees_its_request(server, http):
    with server.client(timeout=60) as other:
        with other.stream("POST", "/generate", json={"text": PROMPT, "stream": True, "sampling_params": {
                "max_new_tokens": 200, "ignore_eos": True}}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
    wait_idle(http)
    load = http.get("/get_load").json()
    assert load == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]


def test_api_key_guards_the_native_routes_in_the_sglang_dialect(chat_model_dir, tmp_path):
    with ServerProcess(None, "--backend", "sglang", "--model-path", chat_model_dir, "--api-key", "sekret",
                       "--context-length", "128", "--random-seed", "7", log_dir=tmp_path) as proc:
        proc.wait_ready()
        with proc.client(timeout=30) as c:
            body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2}}
            assert c.post("/generate", json=body).status_code == 401
            assert c.get("/server_info").status_code == 401
            ok = c.post("/generate", json=body, headers={"Authorization": "Bearer sekret"})
            assert ok.status_code == 200 and ok.json()["meta_info"]["completion_tokens"] <= 2
            info = c.get("/server_info", headers={"Authorization": "Bearer sekret"}).json()
            assert info["api_key"] == "***" and "sekret" not in json.dumps(info)
            # The SGLang command line's own flags are there, with the values the server runs with.
            assert info["context_length"] == 128 and info["random_seed"] == 7
            assert "mem_fraction_static" in info and "schedule_conservativeness" in info
            assert c.get("/health_generate").status_code == 200
