"""Latency of one batch end to end, like `vllm bench latency`: `cserve bench latency`, with
--model defaulting to `smollm2` (see bench_common.py).

    python benchmarks/latency.py --model smollm2 --dtype bfloat16 \
        --input-len 32 --output-len 128 --batch-size 1 --num-iters-warmup 2 --num-iters 5

Prints `Avg latency: X seconds` and the 10/25/50/75/90/99th percentiles, as vLLM does, then
splits one request's time into prefill (time to the first token, measured with
max_tokens=1) and decode: decode tok/s per stream = (output_len - 1) / (latency - TTFT).
"""

import sys

import bench_common

from cserve.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["latency", *bench_common.with_model_path(sys.argv[1:])]))
