"""Per-request records -> the figures of `vllm bench serve`, with vLLM's definitions:

- TTFT: request sent -> first chunk that carries generated text (or tokens);
- E2EL: request sent -> last such chunk (so E2EL = TTFT + the sum of the request's ITLs);
- TPOT: (E2EL - TTFT) / (output tokens - 1), for requests with more than one output token;
- ITL: the gaps between consecutive chunks that carry text (a chunk may hold several tokens);
- goodput: completed requests per second whose TTFT / TPOT / E2EL all meet the SLOs
  (`--goodput ttft:500 tpot:50`, milliseconds); a one-token request counts with TPOT 0.

Pure functions over plain data, so the tests check every figure against hand-made records
(numpy imported where used: `cserve bench --help` imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
# The per-request lists of the result, kept out of the JSON unless --save-detailed (as vLLM).
DETAILED_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")


@dataclass
class RequestRecord:
    """What the client saw of one request; times in seconds (perf_counter)."""

    success: bool = False
    prompt_len: int = 0                  # the server's usage when it sent one, else the dataset's count
    output_tokens: Optional[int] = None  # the server's count; None: count generated_text's tokens
    generated_text: str = ""
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    latency: float = 0.0                 # E2EL
    start_time: float = 0.0
    error: str = ""


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    request_throughput: float
    request_goodput: float
    output_throughput: float
    total_token_throughput: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    output_lens: list[int]               # one per record; 0 for a failed request
    samples: dict[str, list[float]]      # ttft, tpot, itl, e2el in seconds, over the completed requests


def parse_goodput(pairs: Optional[list[str]]) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0}; ValueError names what is wrong."""
    slos: dict[str, float] = {}
    for pair in pairs or []:
        name, _, value = pair.partition(":")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {pair}: give KEY:VALUE pairs, a metric name and a number of "
                             "milliseconds") from None
        if name not in GOODPUT_METRICS:
            raise ValueError(f"--goodput {pair}: the metric must be one of {', '.join(GOODPUT_METRICS)}")
        if slos[name] < 0:
            raise ValueError(f"--goodput {pair}: the value must be non-negative")
    return slos


def _is_good(ttft: float, tpot: float, e2el: float, slos: dict[str, float]) -> bool:
    measured = {"ttft": ttft, "tpot": tpot, "e2el": e2el}
    return all(limit / 1000 >= measured[name] for name, limit in slos.items())


def peak_rates(records: list[RequestRecord]) -> tuple[float, int]:
    """vLLM's peaks over 1-second buckets from the first request's start: the most text chunks
    received in one bucket (its "output tokens/s") and the most requests active in one."""
    import numpy as np

    done = [r for r in records if r.success]
    if not done:
        return 0.0, 0
    t0 = min(r.start_time for r in done)
    end = max(r.start_time + r.latency for r in done)
    buckets = int(np.ceil(end - t0)) + 1
    tokens = np.zeros(buckets)
    active = np.zeros(buckets)
    for r in done:
        chunk_time = r.start_time + r.ttft
        for gap in [0.0, *r.itl]:
            chunk_time += gap
            second = int(chunk_time - t0)
            if 0 <= second < buckets:
                tokens[second] += 1
        active[int(r.start_time - t0):int(r.start_time + r.latency - t0) + 1] += 1
    return float(tokens.max()), int(active.max())


def calculate_metrics(records: list[RequestRecord], duration_s: float, count_tokens: Callable[[str], int],
                      goodput: Optional[dict[str, float]] = None) -> BenchmarkMetrics:
    """`count_tokens(text)` counts a completion's tokens when the server did not say."""
    output_lens: list[int] = []
    total_input = good = 0
    samples: dict[str, list[float]] = {name: [] for name in METRICS}
    for r in records:
        if not r.success:
            output_lens.append(0)
            continue
        out_len = r.output_tokens if r.output_tokens else count_tokens(r.generated_text)
        output_lens.append(out_len)
        total_input += r.prompt_len
        tpot = (r.latency - r.ttft) / (out_len - 1) if out_len > 1 else 0.0
        if out_len > 1:
            samples["tpot"].append(tpot)
        samples["ttft"].append(r.ttft)
        samples["itl"].extend(r.itl)
        samples["e2el"].append(r.latency)
        if goodput and _is_good(r.ttft, tpot, r.latency, goodput):
            good += 1
    completed = sum(r.success for r in records)
    total_output = sum(output_lens)
    peak_tokens, peak_active = peak_rates(records)
    return BenchmarkMetrics(
        completed=completed, failed=len(records) - completed, total_input=total_input, total_output=total_output,
        request_throughput=completed / duration_s, request_goodput=good / duration_s,
        output_throughput=total_output / duration_s, total_token_throughput=(total_input + total_output) / duration_s,
        max_output_tokens_per_s=peak_tokens, max_concurrent_requests=peak_active, output_lens=output_lens,
        samples=samples)


def percentile_name(p: float) -> str:
    """99 -> "99", 99.9 -> "99.9" (the pNN part of vLLM's keys)."""
    return str(int(p)) if int(p) == p else str(p)


def metric_stats(name: str, values_s: list[float], percentiles: list[float]) -> dict[str, float]:
    """mean/median/std/pNN of one metric in milliseconds, under vLLM's keys; 0 when there are no values."""
    import numpy as np

    ms = np.asarray(values_s or [0.0]) * 1000
    stats = {f"mean_{name}_ms": float(np.mean(ms)), f"median_{name}_ms": float(np.median(ms)),
             f"std_{name}_ms": float(np.std(ms))}
    for p in percentiles:
        stats[f"p{percentile_name(p)}_{name}_ms"] = float(np.percentile(ms, p))
    return stats


def result_dict(m: BenchmarkMetrics, records: list[RequestRecord], duration_s: float, selected: list[str],
                percentiles: list[float], goodput: Optional[dict[str, float]]) -> dict:
    """The result of `vllm bench serve` (before the run's settings are added), keys in vLLM's order."""
    result = {
        "duration": duration_s,
        "completed": m.completed,
        "failed": m.failed,
        "total_input_tokens": m.total_input,
        "total_output_tokens": m.total_output,
        "request_throughput": m.request_throughput,
        "request_goodput": m.request_goodput if goodput else None,
        "output_throughput": m.output_throughput,
        "total_token_throughput": m.total_token_throughput,
        "input_lens": [r.prompt_len for r in records],
        "output_lens": m.output_lens,
        "ttfts": [r.ttft for r in records],
        "itls": [r.itl for r in records],
        "generated_texts": [r.generated_text for r in records],
        "errors": [r.error for r in records],
        "max_output_tokens_per_s": m.max_output_tokens_per_s,
        "max_concurrent_requests": m.max_concurrent_requests,
    }
    for name in METRICS:
        if name in selected:
            result.update(metric_stats(name, m.samples[name], percentiles))
    return result
