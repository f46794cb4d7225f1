"""`cserve bench serve` against a real `cserve serve` (HTTP and gRPC) on the tiny model: every
reported figure is checked against the per-request records it saved and against the server's
own counters; and the arrival process on its own."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cserve.bench.serve import arrival_times
from tests.bench.conftest import MODEL_NAME, run_bench
from tests.helpers.server import metric, wait_idle

NUM_PROMPTS, INPUT_LEN, OUTPUT_LEN = 12, 24, 10
PERCENTILES = (50, 90, 99)
SLOS = {"ttft": 300.0, "tpot": 5.0}
# printed label -> result key
PRINTED = {
    "Successful requests:": "completed", "Failed requests:": "failed",
    "Maximum request concurrency:": "max_concurrency", "Benchmark duration (s):": "duration",
    "Total input tokens:": "total_input_tokens", "Total generated tokens:": "total_output_tokens",
    "Request throughput (req/s):": "request_throughput", "Request goodput (req/s):": "request_goodput",
    "Output token throughput (tok/s):": "output_throughput",
    "Peak output token throughput (tok/s):": "max_output_tokens_per_s",
    "Peak concurrent requests:": "max_concurrent_requests", "Total Token throughput (tok/s):": "total_token_throughput",
}


def counters(server) -> dict:
    with server.client(timeout=30) as http:
        wait_idle(http)
        return {name: metric(http, f"vllm:{name}") for name in ("prompt_tokens_total", "generation_tokens_total")}


def per_request(result: dict) -> dict:
    """TTFT, TPOT, ITL and E2EL in ms, rebuilt from the saved records (E2EL = TTFT + the ITLs)."""
    ttft = np.array(result["ttfts"])
    e2el = ttft + np.array([sum(gaps) for gaps in result["itls"]])
    out = np.array(result["output_lens"])
    tpot = [(e - t) / (n - 1) for t, e, n in zip(ttft, e2el, out) if n > 1]
    itl = [gap for gaps in result["itls"] for gap in gaps]
    return {"ttft": ttft * 1000, "tpot": np.array(tpot) * 1000, "itl": np.array(itl) * 1000, "e2el": e2el * 1000}


@pytest.mark.parametrize("backend", ["openai", "vllm", "openai-chat", "grpc"])
def test_every_figure_matches_the_records(bench_server, chat_model_dir, tmp_path, backend):
    before = counters(bench_server)
    port = bench_server.grpc_port if backend == "grpc" else bench_server.port
    r = run_bench("serve", "--backend", backend, "--port", str(port), "--model", chat_model_dir,
                  "--served-model-name", MODEL_NAME, "--num-prompts", str(NUM_PROMPTS), "--random-input-len",
                  str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN), "--ignore-eos", "--max-concurrency", "4",
                  "--request-rate", "200", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles",
                  ",".join(map(str, PERCENTILES)), "--goodput", *(f"{k}:{v}" for k, v in SLOS.items()),
                  "--save-result", "--save-detailed", "--result-dir", str(tmp_path), "--result-filename", "r.json",
                  "--metadata", "run=test")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    after = counters(bench_server)

    assert (res["backend"], res["model_id"], res["num_prompts"], res["run"]) == (backend, chat_model_dir, 12, "test")
    assert (res["request_rate"], res["max_concurrency"], res["burstiness"]) == (200.0, 4, 1.0)
    assert res["completed"] == NUM_PROMPTS and res["failed"] == 0 and res["errors"] == [""] * NUM_PROMPTS
    assert res["output_lens"] == [OUTPUT_LEN] * NUM_PROMPTS  # --ignore-eos: every requested token
    if backend == "openai-chat":  # the chat template wraps the prompt
        assert all(n > INPUT_LEN for n in res["input_lens"])
    else:
        assert res["input_lens"] == [INPUT_LEN] * NUM_PROMPTS
    assert res["total_input_tokens"] == sum(res["input_lens"])
    assert res["total_output_tokens"] == sum(res["output_lens"])
    # The server computed exactly these tokens, plus the initial test request (the first prompt again).
    computed = after["prompt_tokens_total"] - before["prompt_tokens_total"]
    assert computed == res["total_input_tokens"] + res["input_lens"][0]
    assert after["generation_tokens_total"] - before["generation_tokens_total"] == (NUM_PROMPTS + 1) * OUTPUT_LEN
    assert all(len(text) > 0 for text in res["generated_texts"])
    assert all(len(gaps) >= 1 for gaps in res["itls"])  # several chunks per request: it streamed

    duration = res["duration"]
    assert res["request_throughput"] == pytest.approx(NUM_PROMPTS / duration)
    assert res["output_throughput"] == pytest.approx(res["total_output_tokens"] / duration)
    assert res["total_token_throughput"] == pytest.approx((res["total_input_tokens"] + res["total_output_tokens"])
                                                          / duration)
    samples = per_request(res)
    for name, ms in samples.items():
        assert res[f"mean_{name}_ms"] == pytest.approx(ms.mean(), rel=1e-6)
        assert res[f"median_{name}_ms"] == pytest.approx(np.median(ms), rel=1e-6)
        assert res[f"std_{name}_ms"] == pytest.approx(ms.std(), rel=1e-6, abs=1e-9)
        for p in PERCENTILES:
            assert res[f"p{p}_{name}_ms"] == pytest.approx(np.percentile(ms, p), rel=1e-6)
    good = sum(t <= SLOS["ttft"] and tp <= SLOS["tpot"] for t, tp in zip(samples["ttft"], samples["tpot"]))
    assert res["request_goodput"] == pytest.approx(good / duration)
    assert 1 <= res["max_concurrent_requests"] <= NUM_PROMPTS

    # The printed block says the same, with two decimals.
    out = r.stdout
    assert "============ Serving Benchmark Result ============" in out
    for label, key in PRINTED.items():
        value = re.search(rf"^{re.escape(label)}\s+(\S+)", out, re.M).group(1)
        assert float(value) == pytest.approx(res[key], abs=0.006), label
    for name, short in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2EL")):
        value = re.search(rf"^P99 {short} \(ms\):\s+(\S+)", out, re.M).group(1)
        assert float(value) == pytest.approx(res[f"p99_{name}_ms"], abs=0.006)
    assert "Result saved to" in out


def test_defaults_ask_the_server_for_the_model_and_save_vllms_file(bench_server, chat_model_dir, tmp_path):
    r = run_bench("serve", "--base-url", bench_server.base_url, "--tokenizer", chat_model_dir, "--num-prompts", "3",
                  "--random-input-len", "8", "--random-output-len", "4", "--save-result", "--result-dir",
                  str(tmp_path), "--disable-tqdm")
    assert r.returncode == 0, r.stdout + r.stderr
    [path] = tmp_path.glob("*.json")
    assert re.fullmatch(rf"openai-infqps-{MODEL_NAME}-\d{{8}}-\d{{6}}\.json", path.name)
    res = json.loads(path.read_text())
    assert res["model_id"] == MODEL_NAME and res["tokenizer_id"] == chat_model_dir and res["completed"] == 3
    assert "ttfts" not in res and "mean_e2el_ms" not in res  # per-request lists need --save-detailed; e2el is opt-in
    assert {"mean_ttft_ms", "median_tpot_ms", "std_itl_ms", "p99_itl_ms"} <= set(res)


def test_a_failing_first_request_stops_the_run(bench_server, chat_model_dir):
    r = run_bench("serve", "--port", str(bench_server.port), "--model", chat_model_dir, "--served-model-name",
                  "no-such-model", "--num-prompts", "2", "--random-input-len", "8", "--random-output-len", "4")
    assert r.returncode == 1
    assert "Initial test run failed" in r.stderr and "404" in r.stderr


def test_arrivals_follow_the_rate():
    assert arrival_times(5, float("inf")) == [0.0] * 5
    times = arrival_times(200, 10.0, seed=1)
    assert times == sorted(times) and times[-1] == pytest.approx(20.0)  # normalized to num_requests / rate
    assert times == arrival_times(200, 10.0, seed=1) and times != arrival_times(200, 10.0, seed=2)

    def spread(burstiness):
        gaps = np.diff(arrival_times(2000, 10.0, burstiness, seed=0))
        return gaps.std() / gaps.mean()

    assert spread(1.0) == pytest.approx(1.0, abs=0.1)  # Poisson: exponential gaps
    assert spread(0.25) > 1.5 and spread(4.0) < 0.7
    ramp = np.diff(arrival_times(400, float("inf"), seed=0, ramp_up=("linear", 1.0, 50.0)))
    assert ramp[:100].mean() > 5 * ramp[-100:].mean()


def test_without_usage_the_tokenizer_counts(bench_server, chat_model_dir, tmp_path):
    from cserve.tokenizer.loading import load_tokenizer

    r = run_bench("serve", "--port", str(bench_server.port), "--model", chat_model_dir, "--served-model-name",
                  MODEL_NAME, "--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "6",
                  "--ignore-eos", "--extra-body", '{"stream_options": {"include_usage": false}}', "--save-result",
                  "--save-detailed", "--result-dir", str(tmp_path), "--result-filename", "r.json", "--disable-tqdm")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    tok = load_tokenizer(chat_model_dir)
    assert res["input_lens"] == [16] * 4  # the dataset's count
    assert res["output_lens"] == [len(tok.encode(t, add_special_tokens=False).ids) for t in res["generated_texts"]]
    assert res["total_output_tokens"] == sum(res["output_lens"])
