"""The printed result block and the --save-result file of `cserve bench serve`, in vLLM's
format, so that before/after comparisons read and parse the same."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Optional

from cserve.bench.metrics import DETAILED_KEYS, percentile_name
from cserve.bench.serve_args import key_values

METRIC_HEADERS = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
}


def _row(label: str, value, decimals: bool = True) -> str:
    return f"{label:<40} {value:<10.2f}" if decimals else f"{label:<40} {value:<10}"


def result_lines(result: dict, selected: list[str], percentiles: list[float]) -> list[str]:
    """The "Serving Benchmark Result" block; `result` holds the run's settings
    (max_concurrency, request_rate) and result_dict()'s figures."""
    lines = [f"{' Serving Benchmark Result ':=^50}",
             _row("Successful requests:", result["completed"], False),
             _row("Failed requests:", result["failed"], False)]
    if result.get("max_concurrency") is not None:
        lines.append(_row("Maximum request concurrency:", result["max_concurrency"], False))
    if result.get("request_rate", "inf") != "inf":
        lines.append(_row("Request rate configured (RPS):", result["request_rate"]))
    lines += [_row("Benchmark duration (s):", result["duration"]),
              _row("Total input tokens:", result["total_input_tokens"], False),
              _row("Total generated tokens:", result["total_output_tokens"], False),
              _row("Request throughput (req/s):", result["request_throughput"])]
    if result.get("request_goodput") is not None:
        lines.append(_row("Request goodput (req/s):", result["request_goodput"]))
    lines += [_row("Output token throughput (tok/s):", result["output_throughput"]),
              _row("Peak output token throughput (tok/s):", result["max_output_tokens_per_s"]),
              _row("Peak concurrent requests:", result["max_concurrent_requests"]),
              _row("Total Token throughput (tok/s):", result["total_token_throughput"])]
    for name, (short, header) in METRIC_HEADERS.items():
        if name not in selected:
            continue
        lines += [f"{header:-^50}",
                  _row(f"Mean {short} (ms):", result[f"mean_{name}_ms"]),
                  _row(f"Median {short} (ms):", result[f"median_{name}_ms"])]
        for p in percentiles:
            word = percentile_name(p)
            lines.append(_row(f"P{word} {short} (ms):", result[f"p{word}_{name}_ms"]))
    lines.append("=" * 50)
    return lines


def run_settings(args, model_id: str, tokenizer_id: str, max_concurrency: Optional[int]) -> dict:
    """The keys vLLM puts before the figures: date, backend, model, traffic."""
    settings = {"date": datetime.now().strftime("%Y%m%d-%H%M%S"), "backend": args.backend, "label": args.label,
                "model_id": model_id, "tokenizer_id": tokenizer_id, "num_prompts": args.num_prompts}
    settings.update(key_values(args.metadata, "--metadata"))
    settings.update(request_rate=args.request_rate if args.request_rate < float("inf") else "inf",
                    burstiness=args.burstiness, max_concurrency=max_concurrency)
    if args.ramp_up_strategy is not None:
        settings.update(ramp_up_strategy=args.ramp_up_strategy, ramp_up_start_rps=args.ramp_up_start_rps,
                        ramp_up_end_rps=args.ramp_up_end_rps)
    return settings


def result_path(args, result: dict) -> str:
    """--result-filename, or vLLM's name: {label or backend}-{rate}qps[-concurrency{N}]-{model}-{date}.json,
    under --result-dir."""
    name = args.result_filename
    if not name:
        concurrency = f"-concurrency{result['max_concurrency']}" if result["max_concurrency"] is not None else ""
        model = str(result["model_id"]).rstrip("/").split("/")[-1]
        name = f"{args.label or args.backend}-{args.request_rate}qps{concurrency}-{model}-{result['date']}.json"
    if args.result_dir:
        os.makedirs(args.result_dir, exist_ok=True)
        name = os.path.join(args.result_dir, name)
    return name


def save_result(args, result: dict) -> str:
    """Writes the JSON (per-request lists only with --save-detailed, as vLLM); returns the path."""
    data = result if args.save_detailed else {k: v for k, v in result.items() if k not in DETAILED_KEYS}
    path = result_path(args, result)
    with open(path, "a+" if args.append_result else "w", encoding="utf-8") as f:
        if args.append_result and f.tell() != 0:
            f.write("\n")
        json.dump(data, f)
    return path
