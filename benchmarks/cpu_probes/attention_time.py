"""Time of cserve's CPU paged attention (the testing binding, one sequence, 2 threads) for a
SmolLM2-135M-shaped layer (9 query heads, 3 KV heads, head_dim 64, blocks of 16) with a bf16
and an f32 KV cache: the best of 7 calls (each also writes the K/V into the cache).

    CSERVE_ISA=avx2 python benchmarks/cpu_probes/attention_time.py
"""

import time

import numpy as np

from cserve._core import testing as T

rng = np.random.default_rng(0)
heads, kv_heads, dim, block = 9, 3, 64, 16
print(f"isa {T.isa()}")
for nq, length in [(1, 2048), (256, 256), (512, 1024)]:
    q = rng.standard_normal((nq, heads, dim)).astype(np.float32)
    k = rng.standard_normal((length, kv_heads, dim)).astype(np.float32)
    v = rng.standard_normal((length, kv_heads, dim)).astype(np.float32)
    blocks = list(range((length + block - 1) // block))
    for dtype in ["bfloat16", "float32"]:
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            T.paged_attention(q, k, v, block, blocks, dtype, 0.125, 0)
            best = min(best, time.perf_counter() - t0)
        print(f"{nq} queries over {length} keys, {dtype} cache: {best * 1e3:.2f} ms")
