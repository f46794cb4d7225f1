"""Offline throughput, like `vllm bench throughput` with the random dataset.

    python benchmarks/throughput.py --model smollm2 --dtype bfloat16 \
        --num-prompts 64 --input-len 128 --output-len 128

`--preset concurrent16` is the "16 concurrent streams, ~100 in / 64 out" case
(--num-prompts 16 --input-len 100 --output-len 64 --max-num-seqs 16); its headline is
output tokens/s.

Prints, as vLLM does:
    Throughput: X requests/s, Y total tokens/s, Z output tokens/s
"""

from __future__ import annotations

import argparse
import time

import bench_common

PRESETS = {
    "concurrent16": dict(num_prompts=16, input_len=100, output_len=64, max_num_seqs=16),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_common.add_engine_args(p)
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named workload; overrides the four sizes above")
    p.add_argument("--num-iters", type=int, default=1, help="timed repetitions; the best one is reported too")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up batch")
    p.add_argument("--no-split", action="store_true",
                   help="skip the extra prefill-only pass (max_tokens=1) that splits the time into prefill and decode")
    p.add_argument("--output-json", default=None)
    args = p.parse_args(argv)
    if args.preset:
        for k, v in PRESETS[args.preset].items():
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from cserve import SamplingParams

    llm, model_dir = bench_common.start_engine(args)
    vocab = llm.model_info.vocab_size
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, ignore_eos=True, seed=args.seed)

    if not args.no_warmup:  # touch the KV pages and kernel code paths once, untimed
        warm = bench_common.random_prompts(min(args.num_prompts, args.max_num_seqs), args.input_len, vocab,
                                           args.seed + 1)
        llm.generate(warm, SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)

    bw_before = bench_common.bandwidth_probe(args.num_threads)
    contention = bench_common.Contention()
    elapsed = []
    for it in range(args.num_iters):
        prompts = bench_common.random_prompts(args.num_prompts, args.input_len, vocab, args.seed + 100 + it)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        elapsed.append(time.perf_counter() - start)
        num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
        if num_out != args.num_prompts * args.output_len:
            raise SystemExit(f"expected {args.num_prompts * args.output_len} output tokens, got {num_out}")

    num_prompt_tokens = args.num_prompts * args.input_len
    num_output_tokens = args.num_prompts * args.output_len
    total = num_prompt_tokens + num_output_tokens

    def rates(t: float) -> tuple[float, float, float]:
        return args.num_prompts / t, total / t, num_output_tokens / t

    mean_t = sum(elapsed) / len(elapsed)
    req_s, tot_s, out_s = rates(mean_t)
    print(f"Throughput: {req_s:.2f} requests/s, {tot_s:.2f} total tokens/s, {out_s:.2f} output tokens/s")
    print(f"Total num prompt tokens:  {num_prompt_tokens}")
    print(f"Total num output tokens:  {num_output_tokens}")
    if len(elapsed) > 1:
        b_req, b_tot, b_out = rates(min(elapsed))
        print(f"Best of {len(elapsed)}: {b_req:.2f} requests/s, {b_tot:.2f} total tokens/s, "
              f"{b_out:.2f} output tokens/s "
              f"(elapsed: {', '.join(f'{t:.2f}' for t in elapsed)} s)")
    split = {}
    if not args.no_split and args.output_len > 1:
        # The same workload with max_tokens=1: the time to prefill every prompt (and sample one
        # token). What is left of the full run is decoding the other output_len - 1 tokens.
        one = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1, ignore_eos=True, seed=args.seed)
        prefill_t = []
        for it in range(args.num_iters):
            prompts = bench_common.random_prompts(args.num_prompts, args.input_len, vocab, args.seed + 200 + it)
            start = time.perf_counter()
            llm.generate(prompts, one, use_tqdm=False)
            prefill_t.append(time.perf_counter() - start)
        prefill = sum(prefill_t) / len(prefill_t)
        decode = mean_t - prefill
        decode_tokens = args.num_prompts * (args.output_len - 1)
        split = dict(prefill_seconds=prefill, decode_seconds=decode,
                     prefill_tokens_per_second=num_prompt_tokens / prefill,
                     decode_output_tokens_per_second=decode_tokens / decode if decode > 0 else float("nan"))
        print(f"Split: prefill (max_tokens=1 pass) {prefill:.3f} s = "
              f"{split['prefill_tokens_per_second']:.1f} prompt tokens/s; "
              f"decode {decode:.3f} s = {split['decode_output_tokens_per_second']:.1f} output tokens/s "
              f"({decode / max(1, args.output_len - 1) * 1000:.2f} ms per step)")
    cpu = contention.report()
    print(cpu)
    bw_after = bench_common.bandwidth_probe(args.num_threads)
    print(f"memory read bandwidth: {bw_before} before, {bw_after} after")
    result = dict(
        cpu=cpu, bandwidth_before=bw_before, bandwidth_after=bw_after, build=bench_common.build_id(),
        model=model_dir, dtype=llm.model_info.dtype, num_prompts=args.num_prompts, input_len=args.input_len,
        output_len=args.output_len, max_num_seqs=args.max_num_seqs, num_threads=args.num_threads,
        elapsed_time=mean_t, elapsed_times=elapsed, num_requests=args.num_prompts, total_num_tokens=total,
        requests_per_second=req_s, tokens_per_second=tot_s, output_tokens_per_second=out_s, **split,
    )
    bench_common.write_json(args.output_json, result)
    return result


if __name__ == "__main__":
    main()
