"""cserve.bench.metrics and report on hand-made records: every figure of vLLM's result, goodput,
the peaks, and the printed block's format."""

from __future__ import annotations

import numpy as np
import pytest

from cserve.bench.metrics import (RequestRecord, calculate_metrics, parse_goodput, peak_rates, percentile_name,
                                  result_dict)
from cserve.bench.report import result_lines

PERCENTILES = [50.0, 90.0, 99.0, 99.9]
ALL = ["ttft", "tpot", "itl", "e2el"]


def records() -> list[RequestRecord]:
    return [
        RequestRecord(True, 10, 5, "abcde", ttft=0.1, itl=[0.02, 0.03, 0.02, 0.03], latency=0.2, start_time=0.0),
        # no usage from the server: the text is counted (3 words)
        RequestRecord(True, 20, None, "a b c", ttft=0.3, itl=[0.05, 0.05], latency=0.4, start_time=0.5),
        RequestRecord(True, 7, 1, "x", ttft=0.05, itl=[], latency=0.05, start_time=1.2),  # no TPOT
        RequestRecord(False, 9, None, "", start_time=0.2, error="boom"),
    ]


def words(text: str) -> int:
    return len(text.split())


def test_counts_and_throughputs():
    m = calculate_metrics(records(), 2.0, words)
    assert (m.completed, m.failed, m.total_input, m.total_output) == (3, 1, 37, 9)
    assert m.output_lens == [5, 3, 1, 0]
    assert (m.request_throughput, m.output_throughput, m.total_token_throughput) == (1.5, 4.5, 23.0)
    assert m.samples["ttft"] == [0.1, 0.3, 0.05]
    assert m.samples["tpot"] == pytest.approx([0.1 / 4, 0.1 / 2])  # the one-token request has none
    assert m.samples["itl"] == [0.02, 0.03, 0.02, 0.03, 0.05, 0.05]
    assert m.samples["e2el"] == [0.2, 0.4, 0.05]


@pytest.mark.parametrize("slos, good", [
    ({"ttft": 200, "tpot": 30}, 2),   # the second is too slow to start; the one-token one counts with TPOT 0
    ({"e2el": 300}, 2),
    ({"ttft": 10}, 0),
    ({"tpot": 25}, 2),                # 0.1 / 4 = 25 ms meets a 25 ms SLO exactly
])
def test_goodput(slos, good):
    m = calculate_metrics(records(), 2.0, words, slos)
    assert m.request_goodput == good / 2.0
    assert result_dict(m, records(), 2.0, ALL, PERCENTILES, slos)["request_goodput"] == good / 2.0


def test_result_has_vllm_keys_and_numpy_statistics():
    recs = records()
    m = calculate_metrics(recs, 2.0, words)
    r = result_dict(m, recs, 2.0, ALL, PERCENTILES, None)
    assert r["request_goodput"] is None
    assert r["input_lens"] == [10, 20, 7, 9] and r["output_lens"] == [5, 3, 1, 0]
    assert r["ttfts"] == [0.1, 0.3, 0.05, 0.0] and r["errors"] == ["", "", "", "boom"]
    assert r["itls"][0] == [0.02, 0.03, 0.02, 0.03] and r["generated_texts"][1] == "a b c"
    for name in ALL:
        ms = np.array(m.samples[name]) * 1000
        assert r[f"mean_{name}_ms"] == pytest.approx(ms.mean())
        assert r[f"median_{name}_ms"] == pytest.approx(np.median(ms))
        assert r[f"std_{name}_ms"] == pytest.approx(ms.std())
        for p in PERCENTILES:
            assert r[f"p{percentile_name(p)}_{name}_ms"] == pytest.approx(np.percentile(ms, p))
    assert "p99.9_ttft_ms" in r and "p99_ttft_ms" in r


def test_only_selected_metrics_and_all_failed():
    failed = [RequestRecord(False, 5, error="x")] * 2
    m = calculate_metrics(failed, 1.0, words)
    r = result_dict(m, failed, 1.0, ["ttft"], [99.0], None)
    assert (r["completed"], r["failed"], r["total_output_tokens"]) == (0, 2, 0)
    assert r["mean_ttft_ms"] == 0 and r["p99_ttft_ms"] == 0
    assert not any(k.endswith("_tpot_ms") for k in r)


def test_peaks():
    # chunks at 0.1 0.12 0.15 0.17 0.2 | 0.8 0.85 0.9 | 1.25: 8 in the first second; 2 requests active in it
    assert peak_rates(records()) == (8.0, 2)
    assert peak_rates([]) == (0.0, 0)


def test_parse_goodput():
    assert parse_goodput(["ttft:500", "tpot:50", "e2el:1e4"]) == {"ttft": 500.0, "tpot": 50.0, "e2el": 10000.0}
    assert parse_goodput(None) == {}
    for bad in ("ttft", "ttft:x", "itl:5", "ttft:-1"):
        with pytest.raises(ValueError, match="--goodput"):
            parse_goodput([bad])


def test_printed_block_is_vllms():
    recs = records()
    r = result_dict(calculate_metrics(recs, 2.0, words, {"ttft": 200}), recs, 2.0, ALL, [99.0], {"ttft": 200})
    r.update(max_concurrency=4, request_rate=8.0)
    lines = result_lines(r, ALL, [99.0])
    assert lines[0] == "============ Serving Benchmark Result ============"
    assert lines[1] == f"{'Successful requests:':<40} {3:<10}"
    assert f"{'Request rate configured (RPS):':<40} {8.0:<10.2f}" in lines
    assert f"{'Maximum request concurrency:':<40} {4:<10}" in lines
    assert f"{'Request goodput (req/s):':<40} {1.0:<10.2f}" in lines
    assert "---------------Time to First Token----------------" in lines
    assert "-----Time per Output Token (excl. 1st token)------" in lines
    assert "---------------Inter-token Latency----------------" in lines
    assert "----------------End-to-end Latency----------------" in lines
    assert f"{'P99 E2EL (ms):':<40} {r['p99_e2el_ms']:<10.2f}" in lines
    assert lines[-1] == "=" * 50
    r.update(max_concurrency=None, request_rate="inf", request_goodput=None)
    plain = result_lines(r, ["ttft"], [99.0])
    assert not any(line.startswith(("Maximum request", "Request rate", "Request goodput", "Mean TPOT"))
                   for line in plain)
