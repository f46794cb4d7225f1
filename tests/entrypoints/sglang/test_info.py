"""SGLang's informational and control routes on a real server: /model_info, /server_info (and
their /get_ names), /get_load, /flush_cache and /health_generate, in SGLang's shapes."""

from __future__ import annotations

import threading

from cserve import __version__
from tests.entrypoints.sglang.conftest import MODEL_NAME
from tests.helpers.server import wait_idle

MODEL_INFO_KEYS = {"model_path", "tokenizer_path", "is_generation", "preferred_sampling_params", "weight_version",
                   "has_image_understanding", "has_audio_understanding", "model_type", "architectures"}


def test_model_info_under_both_names(http, chat_model_dir):
    info = http.get("/model_info").json()
    assert http.get("/get_model_info").json() == info
    assert set(info) == MODEL_INFO_KEYS
    assert info["model_path"] == info["tokenizer_path"] == chat_model_dir
    assert info["is_generation"] is True and info["preferred_sampling_params"] is None
    assert info["weight_version"] == "default"
    assert info["model_type"] == "llama" and info["architectures"] == ["LlamaForCausalLM"]


def test_server_info_has_sglangs_arguments_with_effective_values(http, chat_model_dir):
    info = http.get("/server_info").json()
    assert set(http.get("/get_server_info").json()) == set(info)
    assert info["model_path"] == chat_model_dir and info["served_model_name"] == MODEL_NAME
    assert info["context_length"] == 256 and info["max_running_requests"] == 8
    assert info["max_total_tokens"] == info["max_total_num_tokens"] > 0
    assert info["page_size"] > 0 and info["random_seed"] == 0
    assert info["tp_size"] == info["dp_size"] == info["pp_size"] == 1
    assert info["max_req_input_len"] == 255 and info["status"] == "ready"
    assert info["max_prefill_tokens"] > 0 and info["chunked_prefill_size"] in (-1, info["max_prefill_tokens"])
    assert info["disable_radix_cache"] is False and info["api_key"] is None
    assert info["host"] == "127.0.0.1" and isinstance(info["port"], int)
    assert info["version"] == __version__
    (internal,) = info["internal_states"]
    assert internal["memory_usage"]["token_capacity"] == info["max_total_tokens"]
    assert internal["effective_max_running_requests_per_dp"] == 8 and "last_gen_throughput" in internal


def test_get_load_is_one_rank_and_counts_running_requests(http):
    (load,) = http.get("/get_load").json()
    assert set(load) == {"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"} and load["dp_rank"] == 0
    seen = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(http.get("/get_load").json()[0])

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        # Four times max_running_requests, to the end of the context: long enough to be seen.
        body = {"text": ["a b c"] * 32, "sampling_params": {"max_new_tokens": 240, "ignore_eos": True}}
        assert http.post("/generate", json=body).status_code == 200
    finally:
        done.set()
        watcher.join()
    assert max(s["num_reqs"] for s in seen) >= 1 and max(s["num_tokens"] for s in seen) > 0
    wait_idle(http)
    assert http.get("/get_load").json() == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]


def test_flush_cache_empties_the_prefix_cache(http):
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 6)
    body = {"text": prompt, "sampling_params": {"max_new_tokens": 1}}
    http.post("/generate", json=body)
    cached = http.post("/generate", json=body).json()["meta_info"]["cached_tokens"]
    assert cached > 0
    wait_idle(http)
    r = http.post("/flush_cache")
    assert r.status_code == 200 and r.text.startswith("Cache flushed.")
    assert http.post("/generate", json=body).json()["meta_info"]["cached_tokens"] == 0
    assert http.get("/flush_cache").status_code == 200
    # The server still serves, and caches again, after the engine loop was paused for the flush.
    assert http.post("/generate", json=body).json()["meta_info"]["cached_tokens"] == 0
    assert http.post("/generate", json=body).json()["meta_info"]["cached_tokens"] > 0


def test_flush_cache_refuses_while_requests_run_and_waits_with_a_timeout(server, http):
    results = {}
    with server.client(timeout=60) as other:
        def busy() -> None:
            body = {"text": ["x y"] * 8, "sampling_params": {"max_new_tokens": 200, "ignore_eos": True}}
            results["busy"] = other.post("/generate", json=body).status_code

        worker = threading.Thread(target=busy)
        worker.start()
        try:
            refused = None
            while worker.is_alive() and refused is None:
                r = http.post("/flush_cache")
                if r.status_code == 400:
                    refused = r
            waited = http.post("/flush_cache", params={"timeout": 30})
        finally:
            worker.join()
    assert results["busy"] == 200
    if refused is not None:  # the batch may end before a flush sees it running
        assert "not idle" in refused.json()["error"]["message"]
    assert waited.status_code == 200
    wait_idle(http)


def test_health_generate(http):
    assert http.get("/health_generate").status_code == 200
    wait_idle(http)
