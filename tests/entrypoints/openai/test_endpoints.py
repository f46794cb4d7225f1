"""The non-generation endpoints: models, health, ping, version, tokenize, detokenize,
tokenizer_info, load, metrics and the OpenAPI docs."""

from __future__ import annotations

from tests.entrypoints.openai.conftest import MODEL_NAME


def test_models_lists_every_served_name(client, chat_model_dir):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME, "other-name"]
    assert models.data[0].model_extra["max_model_len"] == 256
    assert models.data[0].model_extra["root"] == chat_model_dir
    # Either name is accepted; responses carry the first.
    out = client.completions.create(model="other-name", prompt="Hi", max_tokens=1)
    assert out.model == MODEL_NAME
    assert client.models.retrieve("other-name").id == "other-name"


def test_health_ping_version(http):
    assert http.get("/health").status_code == 200
    assert http.get("/ping").status_code == 200 and http.post("/ping").status_code == 200
    from cserve import __version__

    assert http.get("/version").json() == {"version": __version__}


def test_tokenize_detokenize_roundtrip(http):
    r = http.post("/tokenize", json={"prompt": "Hello world!", "return_token_strs": True}).json()
    assert r["count"] == len(r["tokens"]) == len(r["token_strs"]) and r["max_model_len"] == 256
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == "Hello world!"
    bad = http.post("/detokenize", json={"tokens": [10**6]})
    assert bad.status_code == 400 and "vocab" in bad.json()["error"]["message"]
    assert http.post("/tokenize", json={"model": "nope", "prompt": "x"}).status_code == 404


def test_tokenizer_info_and_load(http):
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and "chat_template" in info
    assert http.get("/load").json() == {"server_load": 0}


def test_metrics_use_vllm_names(client, http):
    client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3, extra_body={"ignore_eos": True})
    text = http.get("/metrics").text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total", "vllm:request_success_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_sum"):
        assert name in text, name
    values = _samples(text)
    assert values[f'vllm:generation_tokens_total{{model_name="{MODEL_NAME}",engine="0"}}'] >= 3
    assert values[f'vllm:request_success_total{{model_name="{MODEL_NAME}",engine="0",finished_reason="length"}}'] >= 1


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_docs_are_served(http):
    assert http.get("/openapi.json").status_code == 200
    assert http.get("/docs").status_code == 200
