"""/metrics against vLLM 0.15's list: names, types, labels and buckets, the request-phase
histograms (queue, prefill, decode, inference) from the engine's scheduling stamp, the
per-step token histogram, and docs/serve.md's "Metrics" table checked against what is rendered."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest

from tests.helpers.server import running_server

MODEL = "tiny-metrics"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "serve.md"
SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$")


@pytest.fixture(scope="module")
def srv(chat_model_dir, tmp_path_factory):
    # Two seats, so a third request waits (queue time); the hidden-metrics flag is taken.
    with running_server(chat_model_dir, "--served-model-name", MODEL, "--max-model-len", "256", "--max-num-seqs", "2",
                        "--show-hidden-metrics-for-version", "0.14", log_dir=tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture
def h(srv):
    with srv.client(timeout=60) as c:
        yield c


def samples(h) -> dict[tuple[str, tuple], float]:
    """{(name, ((label, value), ...)): value} of every sample /metrics renders."""
    out = {}
    for line in h.get("/metrics").text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(s: dict, name: str, **labels: str) -> float:
    """The sample `name` whose labels include `labels` (summed when several match)."""
    want = set(labels.items())
    found = [v for (n, ls), v in s.items() if n == name and want <= set(ls)]
    if not found:
        raise KeyError(name, labels)
    return sum(found)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def metrics_rows() -> list[list[str]]:
    body = DOCS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| `")]


def test_metrics_table_matches_what_is_rendered(h):
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", h.get("/metrics").text, re.M))
    rows = metrics_rows()
    served = {name.strip("`"): kind for name, kind, status, _ in rows if status == "served"}
    hidden = {name.strip("`") for name, _, status, _ in rows if status == "not served"}
    assert {status for _, _, status, _ in rows} <= {"served", "not served"}
    assert types == served  # every rendered metric documented as served, with its type, and back
    assert not hidden & set(types)


def test_labels_buckets_and_info(h):
    text = h.get("/metrics").text
    s = samples(h)
    base = {"model_name": MODEL, "engine": "0"}
    assert value(s, "vllm:num_requests_waiting_by_reason", reason="capacity", **base) == 0
    assert value(s, "vllm:num_requests_waiting_by_reason", reason="deferred", **base) == 0
    assert value(s, "vllm:engine_sleep_state", sleep_state="awake", **base) == 1
    assert value(s, "vllm:engine_sleep_state", sleep_state="discard_all", **base) == 0
    les = re.findall(r'^vllm:iteration_tokens_total_bucket\{[^}]*le="([^"]+)"', text, re.M)
    assert les == [f"{float(b)}" for b in (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)] + ["+Inf"]
    les = re.findall(r'^vllm:request_queue_time_seconds_bucket\{[^}]*le="([^"]+)"', text, re.M)
    assert les[:4] == ["0.3", "0.5", "0.8", "1.0"] and les[-2:] == ["7680.0", "+Inf"]
    les = re.findall(r'^vllm:request_prefill_kv_computed_tokens_bucket\{[^}]*le="([^"]+)"', text, re.M)
    assert les == ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "+Inf"]  # 1-2-5 up to 256
    (info,) = [labels for (n, labels), _ in s.items() if n == "vllm:cache_config_info"]
    info = dict(info)
    assert info["engine"] == "0" and info["block_size"] == "16" and int(info["num_gpu_blocks"]) > 0
    assert info["enable_prefix_caching"] == "True" and "gpu_memory_utilization" in info
    for source in ("local_compute", "local_cache_hit", "external_kv_transfer"):
        value(s, "vllm:prompt_tokens_by_source_total", source=source, **base)


def test_request_phases_and_token_counts(h):
    before = samples(h)
    body = {"prompt": "A journey of a thousand miles begins", "max_tokens": 8, "ignore_eos": True}
    usage = h.post("/v1/completions", json=body).json()["usage"]
    after = samples(h)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    for phase in ("queue_time", "prefill_time", "decode_time", "inference_time"):
        assert d(f"vllm:request_{phase}_seconds_count") == 1, phase
    assert d("vllm:request_decode_time_seconds_sum") <= d("vllm:request_inference_time_seconds_sum") + 1e-6
    assert d("vllm:request_prefill_time_seconds_sum") <= d("vllm:request_inference_time_seconds_sum") + 1e-6
    assert (d("vllm:request_queue_time_seconds_sum") + d("vllm:request_inference_time_seconds_sum")
            <= d("vllm:e2e_request_latency_seconds_sum") + 1e-6)
    assert d("vllm:request_decode_time_seconds_sum") > 0
    tpot = d("vllm:request_time_per_output_token_seconds_sum")
    assert tpot == pytest.approx(d("vllm:request_decode_time_seconds_sum") / 7, rel=1e-6)
    prompt = usage["prompt_tokens"]
    assert d("vllm:prompt_tokens_total") == prompt and d("vllm:generation_tokens_total") == 8
    computed = d("vllm:prompt_tokens_by_source_total", source="local_compute")
    cached = d("vllm:prompt_tokens_by_source_total", source="local_cache_hit")
    assert computed + cached == prompt and d("vllm:prompt_tokens_cached_total") == cached
    assert d("vllm:request_prefill_kv_computed_tokens_sum") == computed
    # The engine's steps: one for the prompt, one per further token (at least), tokens summed.
    assert d("vllm:iteration_tokens_total_count") >= 8
    assert d("vllm:iteration_tokens_total_sum") >= computed + 7
    assert d("vllm:request_max_num_generation_tokens_sum") == 8 and d("vllm:request_params_max_tokens_sum") == 8


def test_n_completions_count_as_requests(h):
    before = samples(h)
    h.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "ignore_eos": True, "n": 2})
    after = samples(h)
    assert delta(before, after, "vllm:request_success_total", finished_reason="length") == 2
    assert delta(before, after, "vllm:request_generation_tokens_count") == 2
    assert delta(before, after, "vllm:e2e_request_latency_seconds_count") == 2
    assert delta(before, after, "vllm:request_params_n_count") == 1
    assert delta(before, after, "vllm:request_params_n_bucket", le="1.0") == 0
    assert delta(before, after, "vllm:request_params_n_bucket", le="2.0") == 1
    assert delta(before, after, "vllm:request_max_num_generation_tokens_count") == 1


def test_queue_time_counts_waiting_for_a_seat(chat_model_dir, tmp_path):
    # Two seats again, and requests long enough that waiting for a seat outweighs when the server
    # got round to each request.
    with running_server(chat_model_dir, "--served-model-name", MODEL, "--max-model-len", "2048", "--max-num-seqs",
                        "2", log_dir=tmp_path) as srv, srv.client(timeout=60) as h:
        _queue_time_counts_waiting_for_a_seat(srv, h)


def _queue_time_counts_waiting_for_a_seat(srv, h):
    before = samples(h)

    async def three() -> None:
        async with httpx.AsyncClient(base_url=srv.base_url, timeout=60) as c:
            # Long enough that waiting for a seat outweighs when the server got round to each request.
            body = {"prompt": "Hello", "max_tokens": 2000, "ignore_eos": True}
            rs = await asyncio.gather(*[c.post("/v1/completions", json=body) for _ in range(3)])
            assert all(r.status_code == 200 for r in rs)

    asyncio.run(three())
    after = samples(h)
    queued = delta(before, after, "vllm:request_queue_time_seconds_sum")
    decode = delta(before, after, "vllm:request_decode_time_seconds_sum")
    # Two seats: the third request waits while one of the first two runs all its tokens.
    assert queued >= 0.5 * decode / 3 > 0


def test_hidden_metrics_follow_the_version_flag(monkeypatch):
    from cserve.entrypoints.openai import metrics as m

    class Stats:
        num_running = num_waiting = prefix_cache_queries = prefix_cache_hits = num_preemptions = 0
        kv_cache_usage = 0.0
        steps_by_tokens_log2 = [3, 0, 1]  # 3 steps of one token, 1 of 3-4 tokens
        scheduled_tokens = 7

    def render(flag):
        return m.Metrics("x", 64, lambda: [Stats()], {"block_size": 16}, show_hidden_for=flag).render()

    assert m.shows_hidden("0.14", "0.14") and m.shows_hidden("v0.14.1", "0.14") and not m.shows_hidden("0.13", "0.14")
    assert not m.shows_hidden(None, "0.14")
    assert 'vllm:iteration_tokens_total_bucket{model_name="x",engine="0",le="1.0"} 3' in render(None)
    assert 'vllm:iteration_tokens_total_bucket{model_name="x",engine="0",le="8.0"} 4' in render(None)
    monkeypatch.setattr(m, "HIDDEN_METRICS", {"vllm:prompt_tokens": "0.14"})
    assert "vllm:prompt_tokens_total{" not in render(None) and "# TYPE vllm:prompt_tokens " not in render("0.13")
    assert "vllm:prompt_tokens_total{" in render("0.14") and "vllm:prompt_tokens_cached_total{" in render(None)
