"""Prometheus metrics with vLLM's names (vllm:...), rendered in the text exposition format,
so dashboards and routers written for vLLM keep working against cserve."""

from __future__ import annotations

import bisect
import json
import os
from typing import Callable, Iterable, Optional

# vLLM's histogram buckets.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)


def token_buckets(max_model_len: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len, as vLLM builds them."""
    out, exp = [], 0
    while True:
        for m in (1, 2, 5):
            v = m * 10**exp
            if v > max_model_len:
                return tuple(out)
            out.append(float(v))
        exp += 1


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v))


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    body = ",".join(f'{k}="{v}"' for k, v in pairs)
    return "{" + body + "}" if body else ""


class Histogram:
    def __init__(self, name: str, doc: str, buckets: Iterable[float]) -> None:
        self.name, self.doc = name, doc
        self.bounds = list(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def render(self, labels: list[tuple[str, str]]) -> list[str]:
        lines = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip(self.bounds + [float("inf")], self.counts):
            cumulative += count
            lines.append(f"{self.name}_bucket{_labels(labels + [('le', _fmt(bound))])} {cumulative}")
        lines.append(f"{self.name}_count{_labels(labels)} {cumulative}")
        lines.append(f"{self.name}_sum{_labels(labels)} {_fmt(self.sum)}")
        return lines


class EngineMetrics:
    """What the server counts for the requests one engine served (one per data-parallel replica,
    vLLM's `engine` label)."""

    FINISH_REASONS = ("stop", "length", "abort", "error")

    def __init__(self, max_model_len: int) -> None:
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success = {r: 0 for r in self.FINISH_REASONS}
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             LATENCY_BUCKETS)
        self.request_prompt = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                        token_buckets(max_model_len))
        self.request_generation = Histogram("vllm:request_generation_tokens",
                                            "Number of generation tokens processed.", token_buckets(max_model_len))
        self.request_max_tokens = Histogram("vllm:request_params_max_tokens",
                                            "Histogram of the max_tokens request parameter.",
                                            token_buckets(max_model_len))
        self.request_n = Histogram("vllm:request_params_n", "Histogram of the n request parameter.",
                                   (1, 2, 5, 10, 20))

    def histograms(self) -> tuple[Histogram, ...]:
        return (self.ttft, self.itl, self.tpot, self.e2e, self.request_prompt, self.request_generation,
                self.request_max_tokens, self.request_n)

    def state(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens,
                "success": self.success, "histograms": [[h.counts, h.sum] for h in self.histograms()]}

    def add(self, state: dict) -> None:
        """Adds another API server's counts for the same engine."""
        self.prompt_tokens += state["prompt_tokens"]
        self.generation_tokens += state["generation_tokens"]
        for reason, count in state["success"].items():
            self.success[reason] = self.success.get(reason, 0) + count
        for h, (counts, total) in zip(self.histograms(), state["histograms"]):
            h.counts = [a + b for a, b in zip(h.counts, counts)]
            h.sum += total


class Metrics:
    """Counts the server keeps per request, plus gauges and counters read from the engines; every
    series carries vLLM's labels model_name and engine (the data-parallel replica: 0..N-1)."""

    FINISH_REASONS = EngineMetrics.FINISH_REASONS

    def __init__(self, model_name: str, max_model_len: int, engine_stats: Callable[[], list],
                 cache_info: dict[str, str], num_engines: int = 1, first_label: int = 0) -> None:
        self.model_name = model_name
        self.first_label = first_label  # the global data-parallel rank of engine 0 (hybrid load balancing)
        self.engine_stats = engine_stats  # one stats object per engine
        self.cache_info = cache_info
        self.max_model_len = max_model_len
        self.engines = [EngineMetrics(max_model_len) for _ in range(num_engines)]
        self._share: Optional[tuple[str, int]] = None  # (folder, this API server's index)

    # --- several API servers (--api-server-count): each saves its counts, /metrics sums them ------
    def share(self, folder: str, index: int) -> None:
        self._share = (folder, index)

    @property
    def shared(self) -> bool:
        return self._share is not None

    def save(self) -> None:
        """Writes this API server's counts where its siblings read them (no-op with one server)."""
        if self._share is None:
            return
        folder, index = self._share
        path = os.path.join(folder, f"metrics-{index}.json")
        with open(path + ".tmp", "w") as f:
            json.dump([e.state() for e in self.engines], f)
        os.replace(path + ".tmp", path)

    def _merged(self) -> list[EngineMetrics]:
        if self._share is None:
            return self.engines
        folder, index = self._share
        merged = [EngineMetrics(self.max_model_len) for _ in self.engines]
        for m, e in zip(merged, self.engines):
            m.add(e.state())
        for name in os.listdir(folder):
            if name.startswith("metrics-") and name.endswith(".json") and name != f"metrics-{index}.json":
                try:
                    with open(os.path.join(folder, name)) as f:
                        states = json.load(f)
                except (OSError, ValueError):
                    continue  # a sibling is writing it: its next save counts
                for m, state in zip(merged, states):
                    m.add(state)
        return merged

    def engine(self, index: int) -> EngineMetrics:
        return self.engines[index if 0 <= index < len(self.engines) else 0]

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self._merged())

    @property
    def generation_tokens(self) -> int:
        return sum(e.generation_tokens for e in self._merged())

    def _labels(self, index: int) -> list[tuple[str, str]]:
        return [("model_name", self.model_name), ("engine", str(self.first_label + index))]

    def render(self) -> str:
        stats = self.engine_stats()
        engines = self._merged()
        lines: list[str] = []

        def series(name: str, kind: str, doc: str, values: list[float], suffix: str = "") -> None:
            lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}"])
            for i, v in enumerate(values):
                lines.append(f"{name}{suffix}{_labels(self._labels(i))} {_fmt(v)}")

        def gauge(name: str, doc: str, field: str) -> None:
            series(name, "gauge", doc, [getattr(s, field) for s in stats])

        def counter(name: str, doc: str, values: list[float]) -> None:
            series(name, "counter", doc, values, "_total")

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", "num_running")
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting")
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage")
        counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                [s.prefix_cache_queries for s in stats])
        counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                [s.prefix_cache_hits for s in stats])
        counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                [s.num_preemptions for s in stats])
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [e.prompt_tokens for e in engines])
        counter("vllm:generation_tokens", "Number of generation tokens processed.",
                [e.generation_tokens for e in engines])
        lines.extend(["# HELP vllm:request_success Count of successfully processed requests.",
                      "# TYPE vllm:request_success counter"])
        for i, e in enumerate(engines):
            for reason, count in e.success.items():
                labels = self._labels(i) + [("finished_reason", reason)]
                lines.append(f"vllm:request_success_total{_labels(labels)} {_fmt(count)}")
        for k in range(len(engines[0].histograms())):
            for i, e in enumerate(engines):
                h = e.histograms()[k]
                body = h.render(self._labels(i))
                lines.extend(body if i == 0 else body[2:])  # HELP and TYPE once per name
        info = [(k, str(v)) for k, v in self.cache_info.items()]
        lines.extend(["# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
                      "# TYPE vllm:cache_config_info gauge", f"vllm:cache_config_info{_labels(info)} 1.0"])
        return "\n".join(lines) + "\n"
