"""The flags of `cserve bench serve` (and `sweep`): `vllm bench serve`'s names and defaults.
Only argparse here, so `cserve bench serve --help` imports nothing heavy."""

from __future__ import annotations

import argparse
import uuid

from cserve.bench.backends import BACKENDS
from cserve.bench.datasets import DATASETS


def key_values(values: list[str], flag: str) -> dict[str, str]:
    """["k=v", ...] -> {"k": "v"}; ValueError for an item without '='."""
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{flag} {item}: give KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def headers_of(args) -> dict[str, str]:
    return key_values(args.header, "--header")


def add_serve_args(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = parser.add_argument_group("server")
    g.add_argument("--backend", default="openai", choices=BACKENDS,
                   help="openai: /v1/completions; vllm: the same with vLLM's payload; openai-chat: "
                        "/v1/chat/completions; grpc: cserve's gRPC API (cserve serve --grpc-port)")
    g.add_argument("--base-url", default=None, help="server or API base url, e.g. http://127.0.0.1:8000 "
                   "(grpc: HOST:PORT); overrides --host and --port")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--endpoint", default=None,
                   help="API endpoint (default /v1/completions; /v1/chat/completions for openai-chat)")
    g.add_argument("--header", nargs="+", default=None, metavar="KEY=VALUE",
                   help="headers for every request (gRPC: metadata); OPENAI_API_KEY is sent as a bearer token")
    g.add_argument("--ready-check-timeout-sec", type=int, default=600,
                   help="wait this long for the server to answer before the first request (0: no check)")

    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None, help="the model, for the tokenizer and the request's model field "
                   "(default: the server's first model from /v1/models)")
    g.add_argument("--served-model-name", default=None, help="the model name to send (default: --model)")
    g.add_argument("--tokenizer", default=None,
                   help="tokenizer: a model directory, a .gguf file or a Hugging Face repo id (default: --model)")
    g.add_argument("--tokenizer-mode", default="auto", help="accepted for vLLM's command lines; no effect")
    g.add_argument("--trust-remote-code", action="store_true", help="accepted for vLLM's command lines; no effect")

    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset-name", default="random", choices=DATASETS)
    g.add_argument("--dataset-path", default=None, help="the sharegpt JSON file or the custom JSONL file")
    g.add_argument("--num-prompts", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--disable-shuffle", action="store_true", help="keep the dataset file's order")
    g.add_argument("--no-oversample", action="store_true",
                   help="send fewer requests than --num-prompts when the dataset has fewer")
    g.add_argument("--random-input-len", type=int, default=1024)
    g.add_argument("--random-output-len", type=int, default=128)
    g.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len * (1 - r), len * (1 + r)]")
    g.add_argument("--random-prefix-len", type=int, default=0, help="random tokens shared by every prompt")
    g.add_argument("--sharegpt-output-len", type=int, default=None,
                   help="output length of every request (default: the reply's length in the file)")
    g.add_argument("--custom-output-len", type=int, default=256)
    g.add_argument("--custom-skip-chat-template", action="store_true")
    g.add_argument("--prefix-repetition-prefix-len", type=int, default=256)
    g.add_argument("--prefix-repetition-suffix-len", type=int, default=256)
    g.add_argument("--prefix-repetition-num-prefixes", type=int, default=10)
    g.add_argument("--prefix-repetition-output-len", type=int, default=128)

    g = parser.add_argument_group("traffic")
    g.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second (inf: all at once); arrivals are a gamma process")
    g.add_argument("--burstiness", type=float, default=1.0,
                   help="the gamma shape: 1 is a Poisson process, < 1 burstier, > 1 more even")
    if not sweep:
        g.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    g.add_argument("--ramp-up-strategy", choices=("linear", "exponential"), default=None,
                   help="raise the request rate from --ramp-up-start-rps to --ramp-up-end-rps over the run")
    g.add_argument("--ramp-up-start-rps", type=float, default=None)
    g.add_argument("--ramp-up-end-rps", type=float, default=None)
    g.add_argument("--num-warmups", type=int, default=0, help="untimed requests before the run")
    g.add_argument("--request-id-prefix", default=f"bench-{uuid.uuid4().hex[:8]}-")

    g = parser.add_argument_group("sampling")
    g.add_argument("--ignore-eos", action="store_true", help="generate every requested token (ignore_eos)")
    g.add_argument("--temperature", type=float, default=None, help="default 0 (greedy), as vLLM's")
    for name in ("--top-p", "--min-p", "--frequency-penalty", "--presence-penalty", "--repetition-penalty"):
        g.add_argument(name, type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--logprobs", type=int, default=None)
    g.add_argument("--extra-body", default=None, help="JSON object merged into every request body")

    g = parser.add_argument_group("results")
    g.add_argument("--percentile-metrics", default="ttft,tpot,itl",
                   help="comma-separated, of ttft, tpot, itl, e2el")
    g.add_argument("--metric-percentiles", default="99", help="comma-separated, e.g. 25,50,99")
    g.add_argument("--goodput", nargs="+", default=None, metavar="KEY:VALUE",
                   help="SLOs in ms (ttft, tpot, e2el), e.g. --goodput ttft:500 tpot:50")
    g.add_argument("--save-result", action="store_true", help="write the result as JSON")
    g.add_argument("--save-detailed", action="store_true",
                   help="with --save-result: also the per-request lists (input_lens, ttfts, itls, ...)")
    g.add_argument("--append-result", action="store_true", help="append to the result file as one more line")
    g.add_argument("--result-dir", default=None)
    g.add_argument("--result-filename", default=None)
    g.add_argument("--label", default=None, help="replaces the backend in the result file's name")
    g.add_argument("--metadata", nargs="*", default=None, metavar="KEY=VALUE", help="extra keys for the result")
    g.add_argument("--disable-tqdm", action="store_true")


def sampling_body(args) -> dict:
    """The sampling flags and --extra-body as request fields; temperature 0 unless given (vLLM's)."""
    import json

    body = {k: v for k, v in {
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
        "frequency_penalty": args.frequency_penalty, "presence_penalty": args.presence_penalty,
        "repetition_penalty": args.repetition_penalty}.items() if v is not None}
    body.setdefault("temperature", 0.0)
    if args.extra_body:
        extra = json.loads(args.extra_body)
        if not isinstance(extra, dict):
            raise ValueError("--extra-body: give a JSON object")
        body.update(extra)
    return body


def check_traffic(args) -> None:
    if args.burstiness <= 0:
        raise ValueError(f"--burstiness {args.burstiness}: must be positive")
    if args.ramp_up_strategy is None:
        return
    if args.request_rate != float("inf"):
        raise ValueError("--ramp-up-strategy sets the request rate: drop --request-rate")
    start, end = args.ramp_up_start_rps, args.ramp_up_end_rps
    if start is None or end is None:
        raise ValueError("--ramp-up-strategy needs --ramp-up-start-rps and --ramp-up-end-rps")
    if start < 0 or start > end or (args.ramp_up_strategy == "exponential" and start == 0):
        raise ValueError("ramp-up: 0 <= start <= end (exponential: start > 0)")


def selected_metrics(args) -> list[str]:
    names = [m.strip() for m in args.percentile_metrics.split(",") if m.strip()]
    bad = [m for m in names if m not in ("ttft", "tpot", "itl", "e2el")]
    if bad:
        raise ValueError(f"--percentile-metrics: unknown {', '.join(bad)} (ttft, tpot, itl, e2el)")
    return names


def metric_percentiles(args) -> list[float]:
    return [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
