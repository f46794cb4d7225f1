"""Roofline for CPU decoding: what the memory system and the GEMM units allow.

    python benchmarks/roofline.py --model smollm2 --dtype bfloat16 --num-threads 2 --streams 1 16 --context 164

Measures
- memory bandwidth: a large-array copy with NumPy (one thread; bytes read + bytes written), a copy
  and read-only reductions (sum, max) with torch on --num-threads threads;
- GEMM rate: torch.matmul in bfloat16 and float32 on --num-threads threads, at 2048^3 (the peak
  used for the FLOP ceilings) and at the decode shape [streams x hidden] x [hidden x intermediate]
  (cache-resident, for reference);
- a torch F.linear replay of one decode step's GEMMs over the model's weight shapes.

Then, for the model directory and dtype: the bytes one decode step must read (every weight matrix
once, the LM head included; the embedding table is only gathered, one row per token, and not
counted; plus each stream's KV cache at --context tokens), and
- bandwidth ceiling: streams * read bandwidth / bytes per step (tokens/s);
- FLOP ceiling: GEMM rate / FLOPs per token (2 per weight, plus attention over the context);
- end-to-end ceilings for --workload STREAMS IN OUT runs: one prefill plus OUT - 1 decode steps,
  each at the lower of its two bounds.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

import bench_common

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: page faults, thread start
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth(num_threads: int, mib: int, repeats: int) -> dict:
    """Copy: NumPy (one thread) and torch (num_threads), counting bytes read + written.
    Read: the best of torch sum and max over one array (num_threads), and NumPy sum (one thread).

    Reductions are read-only like the weight stream of a decode step. (A torch sum over an
    array NumPy filled in place with random values ran at about half speed here, reproducibly;
    max over the same array did not, hence the best of two reductions over a torch array.)"""
    import numpy as np
    import torch

    torch.set_num_threads(num_threads)
    n = mib * 2**20 // 4
    src = np.random.default_rng(0).random(n, dtype=np.float32) + np.float32(0)
    dst = np.empty_like(src)
    numpy_copy = 2 * src.nbytes / _best(lambda: np.copyto(dst, src), repeats) / 1e9
    numpy_read = src.nbytes / _best(lambda: src.sum(), repeats) / 1e9
    del dst

    ts = torch.empty(n, dtype=torch.float32).uniform_()
    td = torch.empty(n, dtype=torch.float32)
    torch_copy = 2 * src.nbytes / _best(lambda: td.copy_(ts), repeats) / 1e9
    torch_sum = src.nbytes / _best(lambda: ts.sum(), repeats) / 1e9
    torch_max = src.nbytes / _best(lambda: ts.max(), repeats) / 1e9
    return dict(numpy_copy_1thread_gbs=numpy_copy, numpy_read_1thread_gbs=numpy_read, torch_copy_gbs=torch_copy,
                torch_sum_gbs=torch_sum, torch_max_gbs=torch_max, torch_read_gbs=max(torch_sum, torch_max),
                array_mib=mib, num_threads=num_threads)


def measure_gemm(num_threads: int, shapes: list[tuple[int, int, int]], repeats: int) -> dict:
    import torch

    torch.set_num_threads(num_threads)
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        for m, k, n in shapes:
            a = torch.randn(m, k).to(dtype)
            b = torch.randn(k, n).to(dtype)
            t = _best(lambda: torch.matmul(a, b), repeats)
            out[f"{str(dtype).split('.')[-1]} {m}x{k}x{n}"] = 2 * m * k * n / t / 1e9
    return out


def measure_decode_gemms(model_dir: str, dtype: str, num_threads: int, streams: list[int], repeats: int) -> dict:
    """Times torch.nn.functional.linear (x @ W^T) over the model's own weight shapes (random values,
    distinct buffers, so every step streams all weights from memory as decoding does): a torch-only
    reference for one decode step's GEMM work at each batch size. Attention, norms and sampling are
    not included."""
    import torch

    torch.set_num_threads(num_threads)
    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    config = json.loads((Path(model_dir) / "config.json").read_text())
    weights = []
    for name, (shape, _) in safetensors_shapes(model_dir).items():
        if len(shape) == 2 and (not name.endswith("embed_tokens.weight") or config.get("tie_word_embeddings")):
            weights.append(torch.randn(*shape, dtype=torch.float32).to(tdtype))
    out = {}
    for s in streams:
        xs = {w.shape[1]: torch.randn(s, w.shape[1]).to(tdtype) for w in weights}

        def step():
            for w in weights:
                torch.nn.functional.linear(xs[w.shape[1]], w)

        t = _best(step, repeats)
        out[s] = dict(step_ms=t * 1e3, tok_s=s / t)
    return out


def safetensors_shapes(model_dir: str) -> dict[str, tuple[list[int], str]]:
    shapes: dict[str, tuple[list[int], str]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                shapes[name] = (meta["shape"], meta["dtype"])
    return shapes


def model_costs(model_dir: str, dtype: str, context: int) -> dict:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    if dtype == "auto":
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    size = DTYPE_BYTES[dtype]
    tied = bool(config.get("tie_word_embeddings", False))
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or hidden // heads
    layers = config["num_hidden_layers"]

    matmul_params = 0  # every element read once per step, 2 FLOPs per token
    other_params = 0  # norms: read once, negligible FLOPs
    embed_params = 0
    lm_head_params = 0
    for name, (shape, _) in safetensors_shapes(model_dir).items():
        numel = 1
        for d in shape:
            numel *= d
        if name.endswith("embed_tokens.weight"):
            embed_params = numel
            if tied:
                matmul_params += numel  # read in full as the LM head
                lm_head_params = numel
        elif name.endswith("lm_head.weight"):
            matmul_params += numel
            lm_head_params = numel
        elif len(shape) == 2:
            matmul_params += numel
        else:
            other_params += numel
    weight_bytes = (matmul_params + other_params) * size
    kv_bytes_per_token = 2 * layers * kv_heads * head_dim * size  # K and V, every layer
    attn_flops = 4 * layers * heads * head_dim * context  # QK^T and PV at this context length
    return dict(
        dtype=dtype, tied_embeddings=tied, matmul_params=matmul_params, other_params=other_params,
        embed_params=embed_params, lm_head_params=lm_head_params,
        attn_flops_per_key=4 * layers * heads * head_dim, kv_bytes_per_token=2 * layers * kv_heads * head_dim * size,
        weight_bytes_per_step=weight_bytes,
        kv_bytes_per_token_of_context=kv_bytes_per_token, context=context,
        kv_bytes_per_stream_per_step=kv_bytes_per_token * context,
        flops_per_token=2 * matmul_params + attn_flops,
    )


def workload_ceiling(costs: dict, streams: int, input_len: int, output_len: int, read_gbs: float,
                     gflops: float) -> dict:
    """Lower bound on the time of `streams` requests of input_len prompt tokens and output_len
    output tokens, all at once: one prefill (every weight read once; FLOPs for every prompt
    token, the LM head only on the last one) then output_len - 1 decode steps, each bounded by
    max(bytes / bandwidth, FLOPs / GEMM rate) with the KV cache growing."""
    bw, rate = read_gbs * 1e9, gflops * 1e9
    body = 2 * (costs["matmul_params"] - costs["lm_head_params"])
    attn_prefill = costs["attn_flops_per_key"] * input_len * (input_len + 1) / 2
    prefill_flops = streams * (input_len * body + 2 * costs["lm_head_params"] + attn_prefill)
    prefill_bytes = costs["weight_bytes_per_step"] + streams * input_len * costs["kv_bytes_per_token"]
    prefill_s = max(prefill_bytes / bw, prefill_flops / rate)
    decode_s = 0.0
    for i in range(1, output_len):
        ctx = input_len + i
        step_bytes = costs["weight_bytes_per_step"] + streams * ctx * costs["kv_bytes_per_token"]
        step_flops = streams * (2 * costs["matmul_params"] + costs["attn_flops_per_key"] * ctx)
        decode_s += max(step_bytes / bw, step_flops / rate)
    total = prefill_s + decode_s
    return dict(streams=streams, input_len=input_len, output_len=output_len, prefill_seconds=prefill_s,
                decode_seconds=decode_s, total_seconds=total, output_tok_s=streams * output_len / total,
                decode_tok_s=streams * (output_len - 1) / decode_s if decode_s > 0 else float("nan"))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--streams", type=int, nargs="+", default=[1, 16])
    p.add_argument("--context", type=int, default=164,
                   help="tokens of KV each stream reads per step (~100 in + 64 out)")
    p.add_argument("--workload", type=int, nargs=3, action="append", metavar=("STREAMS", "IN", "OUT"),
                   help="end-to-end ceilings for these runs (default: 1 32 128 and 16 100 64)")
    p.add_argument("--array-mib", type=int, default=512, help="bandwidth test array size (>> last-level cache)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output-json", default=None)
    args = p.parse_args(argv)

    model_dir = bench_common.resolve_model(args.model)
    costs = model_costs(model_dir, args.dtype, args.context)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]

    print(f"machine: {bench_common.machine_line()}")
    contention = bench_common.Contention()
    bw = measure_bandwidth(args.num_threads, args.array_mib, args.repeats)
    print(f"memory bandwidth ({args.array_mib} MiB arrays): copy (read+write bytes): numpy 1 thread "
          f"{bw['numpy_copy_1thread_gbs']:.1f} GB/s, torch {args.num_threads} threads {bw['torch_copy_gbs']:.1f} GB/s; "
          f"read: numpy sum 1 thread {bw['numpy_read_1thread_gbs']:.1f} GB/s, torch {args.num_threads} threads "
          f"sum {bw['torch_sum_gbs']:.1f} / max {bw['torch_max_gbs']:.1f} GB/s")
    shapes = [(2048, 2048, 2048)] + [(s, hidden, inter) for s in args.streams]
    gemm = measure_gemm(args.num_threads, shapes, args.repeats)
    for name, gflops in gemm.items():
        print(f"GEMM {name} ({args.num_threads} threads): {gflops:.1f} GFLOP/s")

    dt = "bfloat16" if costs["dtype"] == "bfloat16" else "float32"
    peak = gemm[f"{dt} 2048x2048x2048"]
    read_gbs = bw["torch_read_gbs"]
    print(f"\nmodel: {model_dir} in {costs['dtype']}")
    print(f"weight bytes per decode step: {costs['weight_bytes_per_step'] / 1e6:.1f} MB "
          f"({costs['matmul_params'] / 1e6:.1f} M matmul params incl. LM head, tied={costs['tied_embeddings']})")
    print(f"KV bytes per stream per step at context {args.context}: "
          f"{costs['kv_bytes_per_stream_per_step'] / 1e6:.2f} MB; "
          f"FLOPs per token: {costs['flops_per_token'] / 1e6:.1f} MFLOP")
    rows = []
    print(f"\n{'streams':>7} {'bytes/step MB':>13} {'BW ceiling tok/s':>16} {'FLOP ceiling tok/s':>18} "
          f"{'bound tok/s':>11}")
    for s in args.streams:
        step_bytes = costs["weight_bytes_per_step"] + s * costs["kv_bytes_per_stream_per_step"]
        bw_ceiling = s * read_gbs * 1e9 / step_bytes
        flop_ceiling = peak * 1e9 / costs["flops_per_token"]
        rows.append(dict(streams=s, bytes_per_step=step_bytes, bandwidth_ceiling_tok_s=bw_ceiling,
                         flop_ceiling_tok_s=flop_ceiling, bound_tok_s=min(bw_ceiling, flop_ceiling)))
        print(f"{s:>7} {step_bytes / 1e6:>13.1f} {bw_ceiling:>16.1f} {flop_ceiling:>18.1f} "
              f"{min(bw_ceiling, flop_ceiling):>11.1f}")
    print(f"(bandwidth: torch read {read_gbs:.1f} GB/s; FLOP rate: {dt} 2048^3 GEMM {peak:.1f} GFLOP/s)")
    workloads = []
    print("\nend-to-end ceilings (prefill + decode, the lower bound of each step):")
    for streams, n_in, n_out in args.workload or [(1, 32, 128), (16, 100, 64)]:
        w = workload_ceiling(costs, streams, n_in, n_out, read_gbs, peak)
        workloads.append(w)
        print(f"  {streams} x ({n_in} in, {n_out} out): prefill >= {w['prefill_seconds'] * 1e3:.0f} ms, decode >= "
              f"{w['decode_seconds'] * 1e3:.0f} ms -> <= {w['output_tok_s']:.0f} output tok/s end to end, "
              f"<= {w['decode_tok_s']:.0f} tok/s while decoding")

    # In a fresh process: after the large GEMMs above, torch's small bf16 GEMMs in the same
    # process ran several times slower (seen with torch 2.13 CPU).
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        replay = pool.apply(measure_decode_gemms,
                            (model_dir, costs["dtype"], args.num_threads, args.streams, args.repeats))
    print(f"\ntorch F.linear replay of one decode step's GEMMs (the model's weight shapes, {costs['dtype']}, "
          f"{args.num_threads} threads; no attention/norms/sampling):")
    for s, r in replay.items():
        print(f"  {s:>3} streams: {r['step_ms']:.2f} ms per step -> {r['tok_s']:.1f} tok/s")
    cpu = contention.report()
    print(cpu)
    result = dict(cpu=cpu, model=model_dir, bandwidth=bw, gemm_gflops=gemm, costs=costs, ceilings=rows,
                  workloads=workloads, torch_replay=replay)
    bench_common.write_json(args.output_json, result)
    return result


if __name__ == "__main__":
    main()
