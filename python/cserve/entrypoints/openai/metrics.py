"""Prometheus metrics with vLLM's names (vllm:...), rendered in the text exposition format,
so dashboards and routers written for vLLM keep working against cserve."""

from __future__ import annotations

import bisect
import json
import os
import re
import time
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


ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

# Metrics deprecated in a release X.Y (name -> "X.Y"): vLLM hides them in X.Y+1 unless
# --show-hidden-metrics-for-version=X.Y, and removes them in X.Y+2. vLLM 0.15 hides none (the last,
# vllm:time_per_output_token_seconds, deprecated in 0.11, went in 0.13), so this is empty; a metric
# put here disappears from /metrics unless the flag names its version.
HIDDEN_METRICS: dict[str, str] = {}


def shows_hidden(version: Optional[str], deprecated_in: str) -> bool:
    """--show-hidden-metrics-for-version=X.Y shows the metrics deprecated in X.Y (a patch part,
    X.Y.Z, is ignored, as vLLM compares minor versions)."""
    if not version:
        return False
    parts = version.strip().lstrip("v").split(".")
    return ".".join(parts[:2]) == deprecated_in


def cache_config_info(args, block_size: int, num_blocks: int, enable_prefix_caching: bool,
                      cache_dtype: str) -> dict[str, str]:
    """vllm:cache_config_info's labels: vLLM's CacheConfig fields as strings, with the values
    cserve runs with (the sizes the engine chose, the flags as given)."""
    def arg(name: str, default=None):
        return getattr(args, name, default)

    return {"block_size": block_size, "gpu_memory_utilization": arg("gpu_memory_utilization") or 0.9,
            "cache_dtype": cache_dtype, "is_attention_free": False,
            "num_gpu_blocks_override": arg("num_gpu_blocks_override"), "sliding_window": None,
            "enable_prefix_caching": enable_prefix_caching,
            "prefix_caching_hash_algo": arg("prefix_caching_hash_algo", "sha256"),
            "cpu_offload_gb": arg("cpu_offload_gb", 0), "calculate_kv_scales": arg("calculate_kv_scales", False),
            "kv_sharing_fast_prefill": arg("kv_sharing_fast_prefill", False),
            "kv_cache_memory_bytes": arg("kv_cache_memory_bytes"), "num_gpu_blocks": num_blocks,
            "num_cpu_blocks": None}


class EngineMetrics:
    """What the server counts for the requests one engine served (one per data-parallel replica,
    vLLM's `engine` label)."""

    FINISH_REASONS = ("stop", "length", "abort", "error")

    def __init__(self, max_model_len: int) -> None:
        self.prompt_tokens = 0
        self.prompt_tokens_cached = 0
        self.generation_tokens = 0
        self.success = {r: 0 for r in self.FINISH_REASONS}
        tokens = token_buckets(max_model_len)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             LATENCY_BUCKETS)
        # vLLM's request phases: WAITING (queue), RUNNING (inference) = PREFILL + DECODE.
        self.queue, self.inference, self.prefill, self.decode = (
            Histogram(f"vllm:request_{name}_time_seconds", f"Histogram of time spent in {phase} phase for request.",
                      LATENCY_BUCKETS)
            for name, phase in (("queue", "WAITING"), ("inference", "RUNNING"), ("prefill", "PREFILL"),
                                ("decode", "DECODE")))
        self.request_prompt = Histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tokens)
        self.request_generation = Histogram("vllm:request_generation_tokens",
                                            "Number of generation tokens processed.", tokens)
        self.request_max_generation = Histogram("vllm:request_max_num_generation_tokens",
                                                "Histogram of maximum number of requested generation tokens.", tokens)
        self.request_max_tokens = Histogram("vllm:request_params_max_tokens",
                                            "Histogram of the max_tokens request parameter.", tokens)
        self.request_n = Histogram("vllm:request_params_n", "Histogram of the n request parameter.",
                                   (1, 2, 5, 10, 20))
        self.prefill_kv_computed = Histogram("vllm:request_prefill_kv_computed_tokens",
                                             "Histogram of new KV tokens computed during prefill "
                                             "(excluding cached tokens).", tokens)

    def histograms(self) -> tuple[Histogram, ...]:
        """In vLLM's order on /metrics (iteration_tokens_total, from the engine, goes after
        request_generation_tokens)."""
        return (self.request_prompt, self.request_generation, self.request_max_generation, self.request_n,
                self.request_max_tokens, self.ttft, self.itl, self.tpot, self.e2e, self.queue, self.inference,
                self.prefill, self.decode, self.prefill_kv_computed)

    def state(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "prompt_tokens_cached": self.prompt_tokens_cached,
                "generation_tokens": self.generation_tokens, "success": self.success,
                "histograms": {h.name: [h.counts, h.sum] for h in self.histograms()}}

    def add(self, state: dict) -> None:
        """Adds another API server's counts for the same engine."""
        self.prompt_tokens += state["prompt_tokens"]
        self.prompt_tokens_cached += state.get("prompt_tokens_cached", 0)
        self.generation_tokens += state["generation_tokens"]
        for reason, count in state["success"].items():
            self.success[reason] = self.success.get(reason, 0) + count
        saved = state["histograms"]
        for h in self.histograms():
            if isinstance(saved, dict) and h.name in saved:
                counts, total = saved[h.name]
                h.counts = [a + b for a, b in zip(h.counts, counts)]
                h.sum += total


class RequestTimes:
    """One engine request's timeline, as vLLM's metrics see it: arrival (the server got it),
    first scheduled (the C++ scheduler's steady-clock stamp in RequestOutput.scheduled_time, the
    clock of time.monotonic()), first and last token (when the engine produced them,
    RequestOutput.time on the same clock)."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics
        self.arrival = time.monotonic()
        self.first_token: Optional[float] = None
        self.last_token: Optional[float] = None
        self.engine = 0

    def tokens(self, count: int, now: float, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        """`count` new tokens arrived at `now` (time.monotonic())."""
        if count == 0:
            return
        m = self.metrics.engine(self.engine)
        if self.first_token is None:
            self.first_token = now
            m.ttft.observe(now - self.arrival)
            m.prompt_tokens += num_prompt_tokens
            m.prompt_tokens_cached += num_cached_tokens
            m.prefill_kv_computed.observe(num_prompt_tokens - num_cached_tokens)
        else:
            m.itl.observe(now - self.last_token)
        self.last_token = now
        m.generation_tokens += count

    def finished(self, now: float, reasons: list[str], generated: list[int], num_prompt_tokens: int,
                 max_tokens: Optional[int], scheduled: float) -> None:
        """Every choice ended (reasons and generated token counts per choice): vLLM counts each of
        the n completions as a finished request, and the parent once for n and the longest."""
        m = self.metrics.engine(self.engine)
        m.request_n.observe(len(reasons))
        m.request_max_generation.observe(max(generated, default=0))
        first = self.first_token
        last = self.last_token
        scheduled = scheduled if scheduled > 0 else (first if first is not None else now)
        for reason, count in zip(reasons, generated):
            m.success[reason if reason in m.success else "stop"] += 1
            m.e2e.observe(now - self.arrival)
            m.queue.observe(max(0.0, scheduled - self.arrival))
            m.prefill.observe(max(0.0, (first if first is not None else scheduled) - scheduled))
            m.inference.observe(max(0.0, (last if last is not None else scheduled) - scheduled))
            decode = (last - first) if first is not None and last is not None else 0.0
            m.decode.observe(decode)
            m.tpot.observe(decode / (count - 1) if count > 1 else 0.0)
            m.request_prompt.observe(num_prompt_tokens)
            m.request_generation.observe(count)
            if max_tokens:
                m.request_max_tokens.observe(max_tokens)
        self.metrics.save()


def spec_decode_totals(stats) -> tuple:
    """(drafts, draft tokens, accepted tokens, accepted per position) of one engine's stats."""
    return (getattr(stats, "spec_decode_num_drafts", 0), getattr(stats, "spec_decode_num_draft_tokens", 0),
            getattr(stats, "spec_decode_num_accepted_tokens", 0),
            list(getattr(stats, "spec_decode_num_accepted_tokens_per_pos", None) or []))


def spec_decode_log_line(before: tuple, after: tuple, seconds: float) -> Optional[str]:
    """vLLM's periodic "SpecDecoding metrics" line over an interval (spec_decode_totals at its start
    and end); None when nothing was drafted in it."""
    drafts = after[0] - before[0]
    if drafts <= 0:
        return None
    draft_tokens, accepted = after[1] - before[1], after[2] - before[2]
    per_pos = [a - (before[3][i] if i < len(before[3]) else 0) for i, a in enumerate(after[3])]
    rate = 100 * accepted / draft_tokens if draft_tokens > 0 else float("nan")
    return ("SpecDecoding metrics: Mean acceptance length: %.2f, Accepted throughput: %.2f tokens/s, "
            "Drafted throughput: %.2f tokens/s, Accepted: %d tokens, Drafted: %d tokens, "
            "Per-position acceptance rate: %s, Avg Draft acceptance rate: %.1f%%" % (
                1 + accepted / drafts, accepted / seconds if seconds > 0 else 0,
                draft_tokens / seconds if seconds > 0 else 0, accepted, draft_tokens,
                ", ".join(f"{c / drafts:.3f}" for c in per_pos), rate))


class Metrics:
    """Counts the server keeps per request, plus gauges and counters read from the engines; every
    series carries vLLM's labels model_name and engine (the data-parallel replica: 0..N-1)."""

    FINISH_REASONS = EngineMetrics.FINISH_REASONS

    def __init__(self, model_name: str, max_model_len: int, engine_stats: Callable[[], list],
                 cache_info: dict[str, str], num_engines: int = 1, first_label: int = 0,
                 show_hidden_for: Optional[str] = None) -> None:
        self.model_name = model_name
        self.first_label = first_label  # the global data-parallel rank of engine 0 (hybrid load balancing)
        self.engine_stats = engine_stats  # one stats object per engine
        self.cache_info = cache_info
        self.max_model_len = max_model_len
        self.show_hidden_for = show_hidden_for
        self.engines = [EngineMetrics(max_model_len) for _ in range(num_engines)]
        self._share: Optional[tuple[str, int]] = None  # (folder, this API server's index)

    def request(self) -> RequestTimes:
        """The timeline of one engine request, which records its metrics as it goes."""
        return RequestTimes(self)

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

    def names(self) -> list[tuple[str, str]]:
        """(name, type) of every metric /metrics renders now, in order."""
        out = []
        for line in self.render().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                out.append((name, kind))
        return out

    def render(self) -> str:
        stats = self.engine_stats()
        engines = self._merged()
        lines: list[str] = []

        def head(name: str, kind: str, doc: str) -> None:
            lines.extend([f"# HELP {name} {doc}", f"# TYPE {name} {kind}"])

        def series(name: str, kind: str, doc: str, values: list[float], suffix: str = "") -> None:
            head(name, kind, doc)
            for i, v in enumerate(values):
                lines.append(f"{name}{suffix}{_labels(self._labels(i))} {_fmt(v)}")

        def labelled(name: str, kind: str, doc: str, label: str, values: list[dict[str, float]],
                     suffix: str = "") -> None:
            head(name, kind, doc)
            for i, by_label in enumerate(values):
                for key, v in by_label.items():
                    lines.append(f"{name}{suffix}{_labels(self._labels(i) + [(label, key)])} {_fmt(v)}")

        def gauge(name: str, doc: str, field: str) -> None:
            series(name, "gauge", doc, [getattr(s, field) for s in stats])

        def counter(name: str, doc: str, values: list[float]) -> None:
            series(name, "counter", doc, values, "_total")

        zeros = [0] * len(stats)
        gauge("vllm:num_requests_running", "Number of requests in model execution batches.", "num_running")
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting")
        # A cserve request waits only for room (blocks, max_num_seqs, the token budget): nothing
        # defers one (no remote KV transfer, grammars compile before the engine sees it).
        labelled("vllm:num_requests_waiting_by_reason", "gauge", "Number of requests waiting, by reason.",
                 "reason", [{"capacity": s.num_waiting, "deferred": 0} for s in stats])
        labelled("vllm:engine_sleep_state", "gauge",
                 "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
                 "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
                 "sleep_state", [{"awake": 1, "weights_offloaded": 0, "discard_all": 0} for _ in stats])
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_cache_usage")
        counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                [s.prefix_cache_queries for s in stats])
        counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
                [s.prefix_cache_hits for s in stats])
        counter("vllm:external_prefix_cache_queries", "External prefix cache queries from KV connector "
                "cross-instance cache sharing, in terms of number of queried tokens.", zeros)
        counter("vllm:external_prefix_cache_hits", "External prefix cache hits from KV connector "
                "cross-instance cache sharing, in terms of number of cached tokens.", zeros)
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items.", zeros)
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items.", zeros)
        counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                [s.num_preemptions for s in stats])
        self._render_spec_decode(stats, counter, labelled)
        counter("vllm:prompt_tokens", "Number of prefill tokens processed.", [e.prompt_tokens for e in engines])
        labelled("vllm:prompt_tokens_by_source", "counter", "Number of prompt tokens by source.", "source",
                 [{"local_compute": e.prompt_tokens - e.prompt_tokens_cached,
                   "local_cache_hit": e.prompt_tokens_cached, "external_kv_transfer": 0} for e in engines], "_total")
        counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).",
                [e.prompt_tokens_cached for e in engines])
        counter("vllm:generation_tokens", "Number of generation tokens processed.",
                [e.generation_tokens for e in engines])
        labelled("vllm:request_success", "counter", "Count of successfully processed requests.", "finished_reason",
                 [e.success for e in engines], "_total")
        per_engine = [e.histograms() for e in engines]
        for k in range(len(per_engine[0])):
            for i, hs in enumerate(per_engine):
                body = hs[k].render(self._labels(i))
                lines.extend(body if i == 0 else body[2:])  # HELP and TYPE once per name
            if per_engine[0][k].name == "vllm:request_generation_tokens":
                self._render_iteration_tokens(stats, lines)
        head("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig")
        for i in range(len(stats)):
            info = [(k, str(v)) for k, v in self.cache_info.items()] + [("engine", str(self.first_label + i))]
            lines.append(f"vllm:cache_config_info{_labels(info)} 1.0")
        return "\n".join(self._without_hidden(lines)) + "\n"

    @staticmethod
    def _render_spec_decode(stats: list, counter: Callable, labelled: Callable) -> None:
        """vLLM's speculative decoding counters, where the engines speculate (their per-position
        counts then have one entry per draft position)."""
        if not any(getattr(s, "spec_decode_num_accepted_tokens_per_pos", None) for s in stats):
            return
        counter("vllm:spec_decode_num_drafts", "Number of spec decoding drafts.",
                [s.spec_decode_num_drafts for s in stats])
        counter("vllm:spec_decode_num_draft_tokens", "Number of draft tokens.",
                [s.spec_decode_num_draft_tokens for s in stats])
        counter("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens.",
                [s.spec_decode_num_accepted_tokens for s in stats])
        labelled("vllm:spec_decode_num_accepted_tokens_per_pos", "counter", "Accepted tokens per draft position.",
                 "position", [{str(p): v for p, v in enumerate(s.spec_decode_num_accepted_tokens_per_pos)}
                              for s in stats], "_total")

    def _without_hidden(self, lines: list[str]) -> list[str]:
        hidden = {n for n, v in HIDDEN_METRICS.items() if not shows_hidden(self.show_hidden_for, v)}
        if not hidden:
            return lines
        return [line for line in lines
                if (line.split(" ")[2] if line.startswith("# ") else re.split(r"[{ ]", line, 1)[0]).removesuffix(
                    "_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") not in hidden]

    def _render_iteration_tokens(self, stats: list, lines: list[str]) -> None:
        """vllm:iteration_tokens_total from each engine's count of steps by tokens scheduled
        (power-of-two classes, so vLLM's bucket bounds, all powers of two, add up exactly)."""
        name = "vllm:iteration_tokens_total"
        lines.extend([f"# HELP {name} Histogram of number of tokens per engine_step.", f"# TYPE {name} histogram"])
        for i, s in enumerate(stats):
            by_log2 = list(getattr(s, "steps_by_tokens_log2", []) or [])
            labels = self._labels(i)
            for bound in ITERATION_TOKEN_BUCKETS:
                k = bound.bit_length() - 1
                lines.append(f"{name}_bucket{_labels(labels + [('le', _fmt(bound))])} {sum(by_log2[:k + 1])}")
            total = sum(by_log2)
            lines.append(f"{name}_bucket{_labels(labels + [('le', '+Inf')])} {total}")
            lines.append(f"{name}_count{_labels(labels)} {total}")
            lines.append(f"{name}_sum{_labels(labels)} {_fmt(getattr(s, 'scheduled_tokens', 0))}")
