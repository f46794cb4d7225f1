"""The CUDA kernels against the NumPy references the CPU kernels are tested with, on random
inputs large enough to fill a GPU. Skipped where cserve was built without CUDA or no GPU is
present (the CPU machines); run them on a lent GPU with benchmarks/gpu_check.sh."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import numerics as ref

cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")
if cuda.device_count() == 0:
    pytest.skip("no CUDA device here", allow_module_level=True)

DTYPES = ["float32", "bfloat16", "float16"]


def tol(dtype: str) -> float:
    return {"float32": 1e-5, "bfloat16": 2e-2, "float16": 3e-3}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, dim", [(1, 64), (37, 576), (4096, 4096), (3, 8192), (5, 16384), (2, 20000),
                                       (2, 65536)])
def test_rms_norm(dtype, rows, dim):
    rng = np.random.default_rng(rows + dim)
    x = ref.round_to(rng.standard_normal((rows, dim)).astype(np.float32), dtype)
    w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    out, _ = cuda.rms_norm(x, w, 1e-5, dtype)
    np.testing.assert_allclose(out, ref.rms_norm(x, w, 1e-5), rtol=tol(dtype), atol=tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads, dim, ld", [(32, 128, 6144), (8, 64, 512), (1, 256, 256)])
def test_rms_norm_heads(dtype, heads, dim, ld):
    # Per-head q/k norms of every token in one launch: rows of `dim` inside token rows of
    # stride ld; the rest of each token row (k, v) is left alone.
    rng = np.random.default_rng(heads + dim)
    x = ref.round_to(rng.standard_normal((37, ld)).astype(np.float32), dtype)
    w = rng.uniform(0.5, 1.5, dim).astype(np.float32)
    out = cuda.rms_norm_heads(x, w, heads, 1e-6, dtype)
    normed = ref.rms_norm(x[:, : heads * dim].reshape(-1, dim), w, 1e-6).reshape(37, heads * dim)
    np.testing.assert_allclose(out[:, : heads * dim], normed, rtol=tol(dtype), atol=tol(dtype))
    assert np.array_equal(out[:, heads * dim:], x[:, heads * dim:])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_residual(dtype):
    rng = np.random.default_rng(1)
    x = ref.round_to(rng.standard_normal((64, 1024)).astype(np.float32), dtype)
    r = ref.round_to(rng.standard_normal((64, 1024)).astype(np.float32), dtype)
    w = rng.uniform(0.5, 1.5, 1024).astype(np.float32)
    out, residual = cuda.rms_norm(x, w, 1e-6, dtype, r)
    h = ref.round_to(x + r, dtype)
    np.testing.assert_allclose(residual, h, rtol=tol(dtype), atol=tol(dtype))
    np.testing.assert_allclose(out, ref.rms_norm(h, w, 1e-6), rtol=tol(dtype), atol=tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype):
    rng = np.random.default_rng(2)
    gu = ref.round_to(rng.standard_normal((513, 2 * 1536)).astype(np.float32), dtype)
    np.testing.assert_allclose(cuda.silu_mul(gu, dtype), ref.silu_mul(gu), rtol=tol(dtype), atol=tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim, rotary_dim", [(64, 64), (128, 128), (128, 64)])
def test_rope(dtype, head_dim, rotary_dim):
    rng = np.random.default_rng(head_dim + rotary_dim)
    tokens, heads = 300, 8
    x = ref.round_to(rng.standard_normal((tokens, heads, head_dim)).astype(np.float32), dtype)
    angles = rng.uniform(0, 6.28, (tokens, rotary_dim // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    got = cuda.rope(x, cos, sin, rotary_dim, dtype)
    np.testing.assert_allclose(got, ref.rope(x, cos, sin, rotary_dim), rtol=tol(dtype), atol=tol(dtype))


@pytest.mark.parametrize("table_dtype", DTYPES)
def test_embedding(table_dtype):
    rng = np.random.default_rng(3)
    table = ref.round_to(rng.standard_normal((1000, 256)).astype(np.float32), table_dtype)
    ids = [int(i) for i in rng.integers(0, 1000, 77)]
    np.testing.assert_array_equal(cuda.embedding(table, ids, table_dtype), table[ids])


CASES = [  # nq, heads, kv heads, head_dim, context, block size, sliding window
    (1, 8, 8, 64, 1, 16, 0),
    (1, 32, 8, 128, 2500, 16, 0),      # decode over more keys than one chunk
    (7, 4, 1, 128, 40, 16, 0),          # a chunked-prefill tail, MQA
    (64, 8, 2, 256, 64, 32, 0),         # prefill from position 0, head_dim 256
    (5, 6, 3, 96, 700, 16, 128),        # sliding window
    (1, 8, 2, 64, 5000, 16, 0),         # split into parts (flash-decoding), merged
    (3, 4, 4, 128, 3000, 16, 1100),     # split, with a window shorter than the context
    (2, 2, 1, 64, 530, 16, 0),          # split into 2 parts, the first token's range is shorter
    (40, 4, 2, 64, 100, 16, 0),         # tiled prefill: 3 tiles of queries (16, 16, 8)
    (33, 2, 2, 128, 33, 8, 9),          # tiled prefill from position 0 with a window
]


@pytest.mark.parametrize("kv_dtype", [*DTYPES, "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("case", CASES)
def test_paged_attention(case, kv_dtype):
    nq, nh, nkv, d, length, bs, window = case
    q, k, v, block_ids, scale = ref.attention_inputs(case)
    got = cuda.paged_attention(q, k, v, bs, block_ids, kv_dtype, scale, window)
    want = ref.attention(q, ref.round_to(k, kv_dtype), ref.round_to(v, kv_dtype), scale, window)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("single", [[0], [5, 6, 20, 39], list(range(0, 40, 3))])
def test_paged_attention_single_tokens_beside_tiles(single):
    # A mixed batch's decode tokens go to the per-token kernel while the rest run in tiles.
    case = (40, 4, 2, 64, 100, 16, 0)
    q, k, v, block_ids, scale = ref.attention_inputs(case)
    got = cuda.paged_attention(q, k, v, 16, block_ids, "float32", scale, 0, single_tokens=single)
    want = ref.attention(q, k, v, scale, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_paged_attention_bf16_activations():
    rng = np.random.default_rng(9)
    q = ref.round_bf16(rng.standard_normal((3, 4, 64)).astype(np.float32))
    k = rng.standard_normal((50, 2, 64)).astype(np.float32)
    v = rng.standard_normal((50, 2, 64)).astype(np.float32)
    got = cuda.paged_attention(q, k, v, 16, [3, 0, 2, 1], "bfloat16", 0.125, 0, act_dtype="bfloat16")
    want = ref.attention(q, ref.round_bf16(ref.round_bf16(k)), ref.round_bf16(ref.round_bf16(v)), 0.125, 0)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("heads, kv_heads, head_dim, message", [(3, 2, 8, "num_kv_heads"), (2, 2, 512, "head_dim")])
def test_bad_arguments_are_errors(heads, kv_heads, head_dim, message):
    q = np.ones((1, heads, head_dim), dtype=np.float32)
    kv = np.ones((4, kv_heads, head_dim), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        cuda.paged_attention(q, kv, kv, 4, [0], "float32", 1.0, 0)
