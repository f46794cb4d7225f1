"""Kernel-level GPU figures for docs/benchmarks.md (issue 7): the device's copy bandwidth, then
cuBLASLt GEMMs of a Llama-3-8B layer and LM head, the same shapes with quantized weights (cuda/quant:
4-bit codes with f16 scales as Q4_0, with f32 scales as AWQ / GPTQ, 8-bit as Q8_0; the GEMV kernel
and the bf16-tile path where both apply), and decode attention, each with its achieved bandwidth
(bytes it must move / time) and FLOP rate against that ceiling.

    python benchmarks/gpu_kernels.py [--output-json FILE]

Runs on a GPU only (it needs cserve._cuda and a device); benchmarks/gpu_check.sh calls it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

# Llama-3-8B: hidden 4096, 32 heads of 128 (8 kv heads), MLP 14336, vocab 128256.
GEMMS = {  # name: (n, k)
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}
QUANT_FORMATS = {  # name: (bits, f16 scales)
    "q4_f16": (4, True),
    "q4_f32": (4, False),
    "q8_f16": (8, True),
}
# Rows: the paths to time (the backend takes the GEMV kernel up to 32 rows, tiles above).
QUANT_PATHS = {1: ("gemv",), 16: ("gemv", "tiles"), 64: ("gemv", "tiles"), 256: ("tiles",)}
ATTENTION = [  # (sequences, context): one stream; the 1000 x 200/180 run at 256 concurrent
    (1, 160),
    (256, 380),
    (256, 2048),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-json", default=None)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    from cserve import _cuda
    from cserve.cuda_libs import find_cublaslt

    if _cuda.device_count() == 0:
        raise SystemExit("no CUDA device")
    lib = find_cublaslt()
    results: dict = {"gemm": [], "quant_gemm": [], "attention": []}
    size = 2 << 30
    copy_ms = _cuda.bench_copy(size, args.iters)
    ceiling = 2 * size / copy_ms / 1e6  # GB/s, read + write
    results["copy_gbps"] = ceiling
    print(f"device-to-device copy of 2 GiB: {copy_ms:.3f} ms = {ceiling:.0f} GB/s (read + write): the ceiling below")
    print(f"{'GEMM':<10}{'m':>5}{'n':>8}{'k':>7}{'ms':>10}{'GB/s':>9}{'of ceiling':>12}{'TFLOP/s':>10}")
    for m in (1, 16, 256):
        for name, (n, k) in GEMMS.items():
            ms = _cuda.bench_gemm(m, n, k, "bfloat16", "float32", args.iters, lib)
            moved = n * k * 2 + m * k * 2 + m * n * 4
            gbps = moved / ms / 1e6
            tflops = 2 * m * n * k / ms / 1e9
            results["gemm"].append(dict(name=name, m=m, n=n, k=k, ms=ms, gbps=gbps, tflops=tflops))
            print(f"{name:<10}{m:>5}{n:>8}{k:>7}{ms:>10.4f}{gbps:>9.0f}{gbps / ceiling:>11.0%}{tflops:>10.1f}")
    print(f"{'quantized':<10}{'format':>8}{'path':>7}{'m':>5}{'n':>8}{'k':>7}{'ms':>10}{'GB/s':>9}{'of ceiling':>12}"
          f"{'TFLOP/s':>10}")
    for m, paths in QUANT_PATHS.items():
        for name, (n, k) in GEMMS.items():
            for fmt, (bits, half) in QUANT_FORMATS.items():
                for path in paths:
                    ms = _cuda.bench_quant_gemm(m, n, k, bits, half, path, args.iters, lib)
                    # Codes, (d, m) pairs per block of 32, f32 x and y.
                    moved = n * k * bits // 8 + n * (k // 32) * (4 if half else 8) + m * k * 4 + m * n * 4
                    gbps = moved / ms / 1e6
                    tflops = 2 * m * n * k / ms / 1e9
                    results["quant_gemm"].append(dict(name=name, format=fmt, path=path, m=m, n=n, k=k, ms=ms,
                                                      gbps=gbps, tflops=tflops))
                    print(f"{name:<10}{fmt:>8}{path:>7}{m:>5}{n:>8}{k:>7}{ms:>10.4f}{gbps:>9.0f}"
                          f"{gbps / ceiling:>11.0%}{tflops:>10.1f}")
    print(f"{'attention':<12}{'seqs':>6}{'context':>9}{'kv':>10}{'ms':>10}{'GB/s':>9}{'of ceiling':>12}")
    for seqs, context in ATTENTION:
        for kv in ("bfloat16", "fp8"):
            ms = _cuda.bench_decode_attention(seqs, context, 32, 8, 128, kv, args.iters)
            moved = seqs * context * 8 * 128 * 2 * (2 if kv == "bfloat16" else 1)
            gbps = moved / ms / 1e6
            results["attention"].append(dict(seqs=seqs, context=context, kv=kv, ms=ms, gbps=gbps))
            print(f"{'decode':<12}{seqs:>6}{context:>9}{kv:>10}{ms:>10.4f}{gbps:>9.0f}{gbps / ceiling:>11.0%}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
