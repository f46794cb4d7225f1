"""Offline throughput, like `vllm bench throughput` with the random dataset: `cserve bench
throughput`, with --model defaulting to `smollm2` (see bench_common.py).

    python benchmarks/throughput.py --model smollm2 --dtype bfloat16 \
        --num-prompts 64 --input-len 128 --output-len 128

`--preset concurrent16` is the "16 concurrent streams, ~100 in / 64 out" case
(--num-prompts 16 --input-len 100 --output-len 64 --max-num-seqs 16); its headline is
output tokens/s. Prints, as vLLM does:
    Throughput: X requests/s, Y total tokens/s, Z output tokens/s
"""

import sys

import bench_common

from cserve.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["throughput", *bench_common.with_model_path(sys.argv[1:])]))
