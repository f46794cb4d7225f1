"""`cserve serve --speculative-config` (n-gram): the OpenAI API serves the same greedy text as a
server without speculation, streamed or not, /metrics carries vLLM's spec_decode counters, and the
periodic log line reads as vLLM's."""

from __future__ import annotations

import json
import re

import pytest

from cserve.entrypoints.openai.metrics import spec_decode_log_line
from tests.helpers.server import metric, running_server

CONFIG = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
PROMPT = "To be or not to be, that is the question. To be or not to be, that is the question. To be or"


@pytest.fixture(scope="module")
def srv(chat_model_dir, tmp_path_factory):
    with running_server(chat_model_dir, "--max-model-len", "256", "--speculative-config", json.dumps(CONFIG),
                        log_dir=tmp_path_factory.mktemp("logs")) as proc:
        yield proc


def test_completions_stream_and_metrics_count(srv, chat_model_dir):
    import openai

    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    got = client.completions.create(model=chat_model_dir, prompt=PROMPT, max_tokens=48, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=chat_model_dir, prompt=PROMPT, max_tokens=48, temperature=0, stream=True))
    assert streamed == got.choices[0].text  # speculation or not, one greedy text
    with srv.client(timeout=30) as http:
        drafts = metric(http, "vllm:spec_decode_num_drafts_total")
        draft_tokens = metric(http, "vllm:spec_decode_num_draft_tokens_total")
        accepted = metric(http, "vllm:spec_decode_num_accepted_tokens_total")
        text = http.get("/metrics").text
    assert drafts > 0 and 0 <= accepted <= draft_tokens <= 3 * drafts
    positions = re.findall(r'vllm:spec_decode_num_accepted_tokens_per_pos_total\{[^}]*position="(\d)"\}', text)
    assert sorted(positions) == ["0", "1", "2"]
    assert "# TYPE vllm:spec_decode_num_drafts counter" in text


def test_server_greedy_text_equals_a_server_without_speculation(srv, chat_model_dir, tmp_path_factory):
    body = dict(model=chat_model_dir, prompt=PROMPT, max_tokens=40, temperature=0)
    with srv.client(timeout=60) as http:
        spec_text = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    with running_server(chat_model_dir, "--max-model-len", "256", log_dir=tmp_path_factory.mktemp("logs")) as plain:
        with plain.client(timeout=60) as http:
            plain_text = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
            assert "vllm:spec_decode" not in http.get("/metrics").text
    assert spec_text == plain_text


def test_log_line_reads_as_vllms():
    line = spec_decode_log_line((0, 0, 0, [0, 0, 0]), (10, 30, 15, [8, 5, 2]), 5.0)
    assert line == ("SpecDecoding metrics: Mean acceptance length: 2.50, Accepted throughput: 3.00 tokens/s, "
                    "Drafted throughput: 6.00 tokens/s, Accepted: 15 tokens, Drafted: 30 tokens, "
                    "Per-position acceptance rate: 0.800, 0.500, 0.200, Avg Draft acceptance rate: 50.0%")
    assert spec_decode_log_line((10, 30, 15, [8, 5, 2]), (10, 30, 15, [8, 5, 2]), 5.0) is None
