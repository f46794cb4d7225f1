"""Latency of one batch end to end, like `vllm bench latency`.

    python benchmarks/latency.py --model smollm2 --dtype bfloat16 \
        --input-len 32 --output-len 128 --batch-size 1 --num-iters-warmup 2 --num-iters 5

Prints `Avg latency: X seconds` and the 10/25/50/75/90/99th percentiles, as vLLM does, then
splits one request's time into prefill (time to the first token, measured with
max_tokens=1) and decode: decode tok/s per stream = (output_len - 1) / (latency - TTFT).
"""

from __future__ import annotations

import argparse
import time

import bench_common

PERCENTILES = (10, 25, 50, 75, 90, 99)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_common.add_engine_args(p)
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-iters-warmup", type=int, default=3)
    p.add_argument("--num-iters", type=int, default=10)
    p.add_argument("--output-json", default=None)
    return p.parse_args(argv)


def _percentile(sorted_values: list[float], q: float) -> float:
    # numpy's default (linear) interpolation, without numpy
    k = (len(sorted_values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def _timed(llm, prompts, params) -> float:
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start


def main(argv=None) -> dict:
    args = parse_args(argv)
    from cserve import SamplingParams

    llm, model_dir = bench_common.start_engine(args)
    vocab = llm.model_info.vocab_size
    # Each iteration uses fresh random prompts, so the prefix cache (if enabled) never helps.
    prompt_sets = iter(
        bench_common.random_prompts(args.batch_size, args.input_len, vocab, args.seed + i) for i in range(1 << 30)
    )
    full = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, ignore_eos=True, seed=args.seed)
    first = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1, ignore_eos=True, seed=args.seed)

    bw_before = bench_common.bandwidth_probe(args.num_threads)
    contention = bench_common.Contention()
    for _ in range(args.num_iters_warmup):
        _timed(llm, next(prompt_sets), full)
    latencies = sorted(_timed(llm, next(prompt_sets), full) for _ in range(args.num_iters))
    avg = sum(latencies) / len(latencies)
    print(f"Avg latency: {avg} seconds")
    for q in PERCENTILES:
        print(f"{q}% percentile latency: {_percentile(latencies, q)} seconds")

    ttfts = sorted(_timed(llm, next(prompt_sets), first) for _ in range(max(3, args.num_iters)))
    ttft = _percentile(ttfts, 50)
    decode_s = _percentile(latencies, 50) - ttft
    per_stream = (args.output_len - 1) / decode_s if decode_s > 0 and args.output_len > 1 else float("nan")
    print(f"Prefill ({args.batch_size} x {args.input_len} tokens, median TTFT): {ttft * 1000:.1f} ms")
    print(f"Decode: {per_stream:.1f} tok/s per stream, {per_stream * args.batch_size:.1f} tok/s over the batch "
          f"({decode_s / max(1, args.output_len - 1) * 1000:.2f} ms per step)")
    cpu = contention.report()
    print(cpu)
    bw_after = bench_common.bandwidth_probe(args.num_threads)
    print(f"memory read bandwidth: {bw_before} before, {bw_after} after")
    result = dict(
        cpu=cpu, bandwidth_before=bw_before, bandwidth_after=bw_after, build=bench_common.build_id(),
        model=model_dir, dtype=llm.model_info.dtype, input_len=args.input_len, output_len=args.output_len,
        batch_size=args.batch_size, num_threads=args.num_threads, avg_latency=avg, latencies=latencies,
        percentiles={str(q): _percentile(latencies, q) for q in PERCENTILES}, ttft_median=ttft,
        decode_tokens_per_second_per_stream=per_stream,
        decode_tokens_per_second=per_stream * args.batch_size,
    )
    bench_common.write_json(args.output_json, result)
    return result


if __name__ == "__main__":
    main()
