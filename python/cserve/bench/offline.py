"""`cserve bench throughput` and `cserve bench latency`: the engine driven directly through
`cserve.LLM`, as `vllm bench throughput` / `vllm bench latency` drive vLLM's.

Prompts are random token ids (ids below min(1000, vocab / 2), where special tokens live, are left
out), `ignore_eos=True`, `temperature=1.0, top_p=1.0`, as in vLLM's benchmarks. Defaults that
differ from vLLM's, for a CPU engine: a 1 GiB KV cache (--kv-cache-memory-bytes), prefix
caching off, and smaller workloads (64 prompts for throughput, 10 iterations for latency).
Every run prints the machine, the _core build, the CPU time other processes took and (unless
--no-bandwidth-probe) the memory bandwidth before and after.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

PRESETS = {
    "concurrent16": dict(num_prompts=16, input_len=100, output_len=64, max_num_seqs=16),
}
LATENCY_PERCENTILES = (10, 25, 50, 75, 90, 99)


def _size(value: str) -> int:
    from cserve.cli.args import human_readable_int

    return human_readable_int(value)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--model", default=None, help="model directory, .gguf file or Hugging Face repo id "
                   "(default: cserve's default model)")
    g.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    g.add_argument("--load-format", default="auto",
                   help="auto, safetensors, gguf, dummy (random weights from config.json alone; no tokenizer "
                        "is loaded, the prompts are token ids)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of the GPU's memory for weights, activations and the KV cache, with "
                        "--kv-cache-memory-bytes 0")
    g.add_argument("--max-num-seqs", type=int, default=256)
    g.add_argument("--max-num-batched-tokens", type=int, default=None)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--num-threads", type=int, default=0, help="kernel threads (0: the engine's default)")
    g.add_argument("--kv-cache-memory-bytes", type=_size, default=1 << 30,
                   help="KV cache size, e.g. 1G (default 1 GiB; 0: size by gpu_memory_utilization)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=False,
                   help="off by default: random prompts never share blocks")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-bandwidth-probe", action="store_true", help="skip the memory-bandwidth probes (~1 s each)")
    g.add_argument("--disable-tqdm", action="store_true")
    g.add_argument("--output-json", default=None, help="write the result here")


def _add_workload(parser: argparse.ArgumentParser, sizes: dict[str, int]):
    """The engine flags and a "workload" group with an integer flag per entry of sizes (name: default)."""
    add_engine_args(parser)
    g = parser.add_argument_group("workload")
    for name, default in sizes.items():
        g.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    return g


def add_throughput_args(parser: argparse.ArgumentParser) -> None:
    g = _add_workload(parser, {"num_prompts": 64, "input_len": 128, "output_len": 128})
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a named workload; overrides the four sizes above (concurrent16: 16 x 100 in / 64 out)")
    g.add_argument("--num-iters", type=int, default=1, help="timed repetitions; the best one is reported too")
    g.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up batch")
    g.add_argument("--no-split", action="store_true",
                   help="skip the extra prefill-only pass (max_tokens=1) that splits the time into prefill and decode")


def add_latency_args(parser: argparse.ArgumentParser) -> None:
    _add_workload(parser, {"input_len": 32, "output_len": 128, "batch_size": 8, "num_iters_warmup": 3,
                           "num_iters": 10})


def start_engine(args: argparse.Namespace):
    """Loads --model with the engine flags and prints the machine and engine lines every report
    starts with. Returns (llm, model path)."""
    from cserve import LLM
    from cserve.bench.machine import engine_line, machine_line
    from cserve.model_source import DEFAULT_MODEL, resolve_model

    model = str(resolve_model(args.model or DEFAULT_MODEL))
    options: dict[str, Any] = dict(
        dtype=args.dtype, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, enable_prefix_caching=args.enable_prefix_caching, seed=args.seed,
        device=args.device, load_format=args.load_format, gpu_memory_utilization=args.gpu_memory_utilization)
    if args.kv_cache_memory_bytes:
        options["kv_cache_memory_bytes"] = args.kv_cache_memory_bytes
    llm = LLM(model, num_threads=args.num_threads, skip_tokenizer_init=args.load_format == "dummy", **options)
    print(f"machine: {machine_line()}")
    print(f"engine: {engine_line(llm)}")
    return llm, model


def random_prompts(num_prompts: int, input_len: int, vocab_size: int, seed: int) -> list[dict]:
    """Token-id prompts drawn uniformly, skipping the low ids where special tokens live."""
    import numpy as np

    rng = np.random.default_rng(seed)
    low = min(1000, vocab_size // 2)
    ids = rng.integers(low, vocab_size, size=(num_prompts, input_len))
    return [{"prompt_token_ids": row.tolist()} for row in ids]


class _Surroundings:
    """The bandwidth probe before, the contention meter during, and both reported after."""

    def __init__(self, args: argparse.Namespace) -> None:
        from cserve.bench.machine import Contention, bandwidth_probe

        self.args = args
        self.before = "not measured" if args.no_bandwidth_probe else bandwidth_probe(args.num_threads)
        self.contention = Contention()

    def report(self) -> dict:
        from cserve.bench.machine import bandwidth_probe, build_id

        cpu = self.contention.report()
        print(cpu)
        after = "not measured" if self.args.no_bandwidth_probe else bandwidth_probe(self.args.num_threads)
        print(f"memory read bandwidth: {self.before} before, {after} after")
        return dict(cpu=cpu, bandwidth_before=self.before, bandwidth_after=after, build=build_id())


def write_json(path: Optional[str], data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _timed_generate(llm, prompts, params, use_tqdm: bool = False) -> float:
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=use_tqdm)
    return time.perf_counter() - start


def throughput(args: argparse.Namespace) -> dict:
    """Prints `Throughput: X requests/s, Y total tokens/s, Z output tokens/s` as vLLM does, the
    token totals, and a prefill/decode split from a second pass with max_tokens=1."""
    from cserve import SamplingParams

    if args.preset:
        for k, v in PRESETS[args.preset].items():
            setattr(args, k, v)
    llm, model = start_engine(args)
    vocab = llm.model_info.vocab_size
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, ignore_eos=True, seed=args.seed)
    if not args.no_warmup:  # touch the KV pages and kernel code paths once, untimed
        warm = random_prompts(min(args.num_prompts, args.max_num_seqs), args.input_len, vocab, args.seed + 1)
        llm.generate(warm, SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)

    surroundings = _Surroundings(args)
    elapsed = []
    for it in range(args.num_iters):
        prompts = random_prompts(args.num_prompts, args.input_len, vocab, args.seed + 100 + it)
        start = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=not args.disable_tqdm)
        elapsed.append(time.perf_counter() - start)
        num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
        if num_out != args.num_prompts * args.output_len:
            raise RuntimeError(f"expected {args.num_prompts * args.output_len} output tokens, got {num_out}")

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
        print(f"Best of {len(elapsed)}: {b_req:.2f} requests/s, {b_tot:.2f} total tokens/s, {b_out:.2f} output "
              f"tokens/s (elapsed: {', '.join(f'{t:.2f}' for t in elapsed)} s)")
    split = {}
    if not args.no_split and args.output_len > 1:
        # The same workload with max_tokens=1: the time to prefill every prompt (and sample one
        # token). What is left of the full run is decoding the other output_len - 1 tokens.
        one = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1, ignore_eos=True, seed=args.seed)
        prefill = sum(_timed_generate(llm, random_prompts(args.num_prompts, args.input_len, vocab,
                                                          args.seed + 200 + it), one)
                      for it in range(args.num_iters)) / args.num_iters
        decode = mean_t - prefill
        decode_tokens = args.num_prompts * (args.output_len - 1)
        split = dict(prefill_seconds=prefill, decode_seconds=decode,
                     prefill_tokens_per_second=num_prompt_tokens / prefill,
                     decode_output_tokens_per_second=decode_tokens / decode if decode > 0 else float("nan"))
        print(f"Split: prefill (max_tokens=1 pass) {prefill:.3f} s = "
              f"{split['prefill_tokens_per_second']:.1f} prompt tokens/s; "
              f"decode {decode:.3f} s = {split['decode_output_tokens_per_second']:.1f} output tokens/s "
              f"({decode / max(1, args.output_len - 1) * 1000:.2f} ms per step)")
    result = dict(
        **surroundings.report(), model=model, dtype=llm.model_info.dtype, num_prompts=args.num_prompts,
        input_len=args.input_len, output_len=args.output_len, max_num_seqs=args.max_num_seqs,
        num_threads=args.num_threads, elapsed_time=mean_t, elapsed_times=elapsed, num_requests=args.num_prompts,
        total_num_tokens=total, requests_per_second=req_s, tokens_per_second=tot_s, output_tokens_per_second=out_s,
        **split)
    write_json(args.output_json, result)
    return result


def latency(args: argparse.Namespace) -> dict:
    """Prints `Avg latency: X seconds` and the 10/25/50/75/90/99th percentiles, as vLLM does,
    then splits one batch's time into prefill (median time to the first token, measured with
    max_tokens=1) and decode: tok/s per stream = (output_len - 1) / (latency - TTFT)."""
    import numpy as np
    from tqdm import tqdm

    from cserve import SamplingParams

    llm, model = start_engine(args)
    vocab = llm.model_info.vocab_size
    # Each iteration uses fresh random prompts, so the prefix cache (if enabled) never helps.
    seeds = iter(range(args.seed, args.seed + (1 << 30)))

    def batch():
        return random_prompts(args.batch_size, args.input_len, vocab, next(seeds))

    full = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=args.output_len, ignore_eos=True, seed=args.seed)
    first = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1, ignore_eos=True, seed=args.seed)
    surroundings = _Surroundings(args)
    for _ in tqdm(range(args.num_iters_warmup), desc="Warmup iterations", disable=args.disable_tqdm):
        _timed_generate(llm, batch(), full)
    latencies = [_timed_generate(llm, batch(), full)
                 for _ in tqdm(range(args.num_iters), desc="Profiling iterations", disable=args.disable_tqdm)]
    percentiles = {str(q): float(np.percentile(latencies, q)) for q in LATENCY_PERCENTILES}
    avg = float(np.mean(latencies))
    print(f"Avg latency: {avg} seconds")
    for q, value in percentiles.items():
        print(f"{q}% percentile latency: {value} seconds")

    ttft = float(np.median([_timed_generate(llm, batch(), first) for _ in range(max(3, args.num_iters))]))
    decode_s = percentiles["50"] - ttft
    per_stream = (args.output_len - 1) / decode_s if decode_s > 0 and args.output_len > 1 else float("nan")
    print(f"Prefill ({args.batch_size} x {args.input_len} tokens, median TTFT): {ttft * 1000:.1f} ms")
    print(f"Decode: {per_stream:.1f} tok/s per stream, {per_stream * args.batch_size:.1f} tok/s over the batch "
          f"({decode_s / max(1, args.output_len - 1) * 1000:.2f} ms per step)")
    result = dict(
        **surroundings.report(), model=model, dtype=llm.model_info.dtype, input_len=args.input_len,
        output_len=args.output_len, batch_size=args.batch_size, num_threads=args.num_threads, avg_latency=avg,
        latencies=sorted(latencies), percentiles=percentiles, ttft_median=ttft,
        decode_tokens_per_second_per_stream=per_stream, decode_tokens_per_second=per_stream * args.batch_size)
    write_json(args.output_json, result)
    return result
