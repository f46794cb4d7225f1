"""CPU kernels against NumPy references on random inputs (odd shapes, every storage dtype).

This module imports no torch, so tests/backend/test_isa.py can rerun it quickly under
each CSERVE_ISA level in a subprocess.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve._core import testing as T
from tests.helpers import numerics as ref

DTYPES = ["float32", "bfloat16", "float16"]
ISAS = ["scalar", "avx2", "avx512", "avx512_bf16"]


def test_isa_name():
    assert T.isa() in ISAS
    want = os.environ.get("CSERVE_ISA")
    if want:
        # The variable lowers the level, never raises it; avx2_vnni is the avx2 level, amx avx512_bf16's.
        level = {"avx2_vnni": "avx2", "amx": "avx512_bf16"}.get(want, want)
        assert ISAS.index(T.isa()) <= ISAS.index(level)
        if level in ("scalar", "avx2"):
            assert T.isa() == level


def test_amx_follows_the_isa():
    # AMX tiles only where the CPU has them and CSERVE_ISA is unset or "amx".
    want = os.environ.get("CSERVE_ISA", "")
    assert T.amx_in_use() == (T.cpu_has_amx() and T.isa() == "avx512_bf16" and want in ("", "amx"))


def test_quantized_kernel_follows_the_isa():
    want = os.environ.get("CSERVE_ISA", "")
    kernel = T.qgemm_kernel()
    if T.isa() == "scalar":
        assert kernel == "scalar"
    elif want == "avx2":  # plain AVX2, even on a CPU with AVX-VNNI
        assert kernel == "avx2"
    elif want == "avx2_vnni":
        assert kernel == ("avx2_vnni" if T.cpu_has_avx_vnni() else "avx2")
    else:
        assert kernel in ("avx512_vnni", "avx2_vnni" if T.cpu_has_avx_vnni() else "avx2")


def _gemm_tol(x, w, dtype):
    absdot = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    k = x.shape[1]
    # f32 accumulation over k terms, plus (bf16) x rounded to bf16 by the AVX512-BF16 kernel.
    rel = 4 * k * 2.0**-24 + (1.01 * 2.0**-8 if dtype == "bfloat16" else 0.0)
    return rel * absdot + 1e-6


GEMM_SHAPES = [(1, 1, 1), (1, 17, 33), (3, 16, 64), (5, 33, 7), (17, 47, 130), (64, 96, 64), (7, 100, 257),
               (33, 5, 512), (2, 300, 31),
               # k a multiple of 32 and 4+ rows: the AMX tiles (pairs of panels and of row tiles, tails)
               (4, 16, 32), (16, 64, 576), (40, 33, 96), (50, 80, 64),
               # rows in blocks of 32 (a 160 KiB bf16 block of x at k = 1536), the last one short
               (300, 40, 1536)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", GEMM_SHAPES)
def test_gemm(m, n, k, dtype):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal((m, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32) if (m + n) % 2 else None
    threads = 1 + (m + k) % 3
    y = T.gemm(w, x, dtype, bias=bias, num_threads=threads)
    assert y.shape == (m, n) and y.dtype == np.float32
    want = x.astype(np.float64) @ ref.round_to(w, dtype).astype(np.float64).T
    if bias is not None:
        want += bias
    err = np.abs(y - want)
    tol = _gemm_tol(x, w, dtype)
    assert (err <= tol).all(), f"max err {err.max()} at {np.unravel_index(err.argmax(), err.shape)}"


@pytest.mark.parametrize("k", [96, 1536])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_row_does_not_depend_on_its_batch(dtype, k):
    # Rows of one call equal the rows computed alone, bit for bit, for every row count (AMX
    # tiles included, at k = 1536 in blocks of 32 rows): a verification step must decode exactly
    # as plain decoding does.
    rng = np.random.default_rng(12)
    w = rng.standard_normal((70, k), dtype=np.float32)
    x = rng.standard_normal((40, k), dtype=np.float32)
    alone = np.concatenate([T.gemm(w, x[i:i + 1], dtype) for i in range(40)])
    for m in [2, 3, 4, 5, 9, 16, 17, 33, 40]:
        np.testing.assert_array_equal(T.gemm(w, x[:m], dtype, num_threads=2), alone[:m], err_msg=str(m))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(4100, 1050, 64), (700, 1200, 576)], ids=["streamed", "rows-split"])
def test_a_large_result_equals_small_batches(dtype, m, n, k):
    # 4100 x 1050 floats (over 16 MiB): the AMX kernel stores such results past the caches, whole
    # 16-float rows only (the last panel's 10 columns go the usual way). 700 rows of 576 against
    # 1.4 MB of bf16 weights: the two threads split the rows as well as the panels (two panel
    # ranges of at most 1 MiB, blocks of 128 rows). With and without bias, every row gets the sums
    # it gets in a batch of 16.
    rng = np.random.default_rng(m)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x = rng.standard_normal((m, k), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    for b in [None, bias]:
        big = T.gemm(w, x, dtype, bias=b, num_threads=2)
        small = np.concatenate([T.gemm(w, x[i:i + 16], dtype, bias=b) for i in range(0, m, 16)])
        np.testing.assert_array_equal(big, small)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,half,k,n", [(1, 16, 32, 40), (5, 48, 96, 96), (16, 96, 576, 576), (33, 32, 64, 17),
                                        (70, 80, 40, 64), (3, 24, 64, 32), (1100, 1024, 32, 48),
                                        (200, 32, 1024, 1024), (16, 1536, 576, 576)])
def test_mlp_equals_linear_activation_linear(m, half, k, n, dtype, act):
    # The gate_up product and activation in one pass where gemm's kernel for it fuses them (bf16
    # weights on an AVX512_BF16 CPU: AMX tiles or vdpbf16ps; gate width a multiple of 16), the
    # activation handed to the down projection as the bf16 rows or tiles it reads where down takes
    # the same kernel (AMX: a width in whole 32-value steps); gemm, the activation and gemm
    # elsewhere: the same floats every way.
    rng = np.random.default_rng(m + half + k)
    w = rng.standard_normal((2 * half, k), dtype=np.float32)
    w_down = rng.standard_normal((n, half), dtype=np.float32)
    x = rng.standard_normal((m, k), dtype=np.float32)
    bias = rng.standard_normal(2 * half, dtype=np.float32) if m % 2 else None
    down_bias = rng.standard_normal(n, dtype=np.float32) if m % 3 else None
    out, gate_up_unused, act_unused = T.backend_mlp("cpu", w, w_down, x, dtype, bias=bias, down_bias=down_bias,
                                                     act=act)
    def kernel(cols):  # gemm's bf16 kernel for a matrix of `cols` inputs
        if dtype != "bfloat16" or T.isa() != "avx512_bf16":
            return None
        return "amx" if T.amx_in_use() and (cols + 1) // 2 * 2 % 32 == 0 else "vdpbf16ps"

    gated = kernel(k) is not None and half % 16 == 0
    assert gate_up_unused == gated
    assert act_unused == (gated and kernel(half) == kernel(k) and half % (32 if kernel(k) == "amx" else 16) == 0)
    gate_up = T.gemm(w, x, dtype, bias=bias)
    a = T.silu_mul(gate_up) if act == "silu" else T.gelu_tanh_mul(gate_up)
    np.testing.assert_array_equal(out, T.gemm(w_down, a, dtype, bias=down_bias))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_bf16_x_rounding_only(dtype):
    """With x exactly representable in bf16, every dtype is exact up to f32 accumulation."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((37, 70), dtype=np.float32)
    x = ref.round_bf16(rng.standard_normal((9, 70), dtype=np.float32))
    y = T.gemm(w, x, dtype)
    want = x.astype(np.float64) @ ref.round_to(w, dtype).astype(np.float64).T
    assert np.abs(y - want).max() <= 1e-4


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_rounds_to_nearest_even(dtype):
    rng = np.random.default_rng(6)
    w = rng.standard_normal((45, 19), dtype=np.float32)
    # Values exactly halfway between two bf16 numbers (ties go to even) and tiny ones.
    w[0, :4] = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8), 1e-30], dtype=np.float32)
    ids = [0, 44, 3, 3, 17]
    got = T.gather_rows(w, dtype, ids)
    want = ref.round_to(w, dtype)[ids]
    np.testing.assert_array_equal(got, want)


def test_gather_rows_bad_id():
    w = np.ones((4, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="out of range"):
        T.gather_rows(w, "float32", [4])


@pytest.mark.parametrize("rows,dim", [(1, 1), (3, 7), (5, 33), (9, 128), (2, 1000)])
def test_rms_norm(rows, dim):
    rng = np.random.default_rng(rows * dim)
    x = (3 * rng.standard_normal((rows, dim))).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    for eps in (1e-6, 1e-2):
        got = T.rms_norm(x, w, eps)
        np.testing.assert_allclose(got, ref.rms_norm(x, w, eps), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("tokens,inter", [(1, 1), (3, 7), (4, 33), (7, 160), (2, 1001)])
def test_silu_mul(tokens, inter):
    rng = np.random.default_rng(tokens + inter)
    gu = (4 * rng.standard_normal((tokens, 2 * inter))).astype(np.float32)
    gu[0, 0] = -80.0  # far in the tail: silu -> -0
    got = T.silu_mul(gu)
    np.testing.assert_allclose(got, ref.silu_mul(gu), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("tokens,inter", [(1, 1), (3, 7), (4, 33), (7, 160), (2, 1001)])
def test_gelu_tanh_mul(tokens, inter):
    rng = np.random.default_rng(tokens + inter)
    gu = (4 * rng.standard_normal((tokens, 2 * inter))).astype(np.float32)
    gu[0, 0] = -80.0  # far in the tail: gelu -> -0
    if inter > 1:
        gu[0, 1] = 60.0  # and the other: gelu -> x
    got = T.gelu_tanh_mul(gu)
    np.testing.assert_allclose(got, ref.gelu_tanh_mul(gu), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("n", [1, 15, 17, 4096 * 2 + 5])
@pytest.mark.parametrize("cap", [0.5, 30.0])
def test_softcap(n, cap):
    rng = np.random.default_rng(n)
    x = (cap * 3 * rng.standard_normal(n)).astype(np.float32)
    x[0] = 1e30  # exp overflows: the cap itself
    if n > 1:
        x[1] = -1e30
    got = T.softcap(x, cap)
    np.testing.assert_allclose(got, ref.softcap(x, cap), rtol=1e-5, atol=2e-6 * cap)
    assert np.abs(got).max() <= cap


@pytest.mark.parametrize("tokens,heads,dim,rotary", [(1, 1, 2, 2), (3, 4, 8, 8), (5, 3, 64, 32), (7, 2, 128, 128),
                                                     (2, 5, 24, 12), (400, 4, 64, 64)])  # 400: tokens over threads
def test_rope(tokens, heads, dim, rotary):
    rng = np.random.default_rng(tokens * heads + dim)
    x = rng.standard_normal((tokens, heads, dim)).astype(np.float32)
    pos = rng.integers(0, 5000, size=tokens)
    inv = 10000.0 ** (-np.arange(0, rotary, 2) / rotary)
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    got = T.rope(x, cos, sin, rotary)
    np.testing.assert_allclose(got, ref.rope(x, cos, sin, rotary), rtol=1e-5, atol=1e-5)
    # The dims past rotary_dim are untouched.
    np.testing.assert_array_equal(got[:, :, rotary:], x[:, :, rotary:])


def test_rope_rejects_odd_rotary_dim():
    x = np.ones((1, 1, 8), dtype=np.float32)
    c = np.ones((1, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="rotary_dim"):
        T.rope(x, c, c, 3)


ATTN_CASES = [
    # nq, heads, kv_heads, dim, len, block_size, window
    (1, 1, 1, 8, 1, 16, 0),      # one token
    (5, 4, 2, 16, 5, 4, 0),      # full prefill, GQA
    (17, 8, 1, 32, 17, 16, 0),   # MQA, crosses a block
    (1, 4, 4, 64, 100, 16, 0),   # decode
    (6, 6, 3, 24, 45, 8, 0),     # chunk in the middle of a sequence, odd head_dim
    (40, 4, 2, 16, 40, 4, 7),    # sliding window over a whole prefill
    (3, 2, 1, 128, 70, 32, 12),  # window in a decode-ish chunk, head_dim 128
    (1, 4, 1, 16, 700, 16, 0),   # long decode: keys split over parts and merged
    (2, 8, 1, 8, 600, 1, 300),   # block size 1, long window
    (70, 2, 2, 8, 70, 16, 0),    # more rows than one work unit holds
    # head_dim a multiple of 32: AMX tiles with a bf16 cache where the CPU has them. One row tile
    # of queries: keys 16 at a time where they are (whole groups in one block) or copied.
    (1, 9, 3, 64, 164, 16, 0),      # a SmolLM2 layer's decode step: the last 4 keys copied
    (1, 8, 1, 64, 700, 16, 0),      # long decode: keys split over parts and merged
    (4, 8, 2, 64, 90, 8, 0),        # a token and 3 drafts: 16 rows, blocks of 8 (keys copied)
    (2, 4, 1, 32, 50, 16, 9),       # window: groups that start inside a block
    (1, 16, 1, 64, 40, 16, 0),      # 16 query heads on one kv head: a whole row tile
    # More row tiles: keys and values re-laid for the tiles.
    (100, 9, 3, 64, 100, 16, 0),    # a SmolLM2 layer's prefill: units of 42, 42 and 16 tokens
    (300, 4, 2, 64, 300, 16, 0),    # keys in several chunks
    (40, 8, 2, 128, 90, 8, 0),      # chunk in the middle of a sequence, head_dim 128, blocks of 8
    (50, 6, 3, 96, 50, 32, 20),     # sliding window, head_dim 96
    (33, 2, 1, 32, 33, 1, 0),       # block size 1, a last row tile of one row
    (20, 16, 2, 64, 260, 256, 0),   # blocks of 256: one chunk per block
]


def _bf16_probabilities(d, kv_dtype):
    """Whether paged attention multiplies the values by probabilities rounded to bf16: on AMX
    tiles (every row count: prefill, decode, verification), or by vdpbf16ps over pairs of keys on
    other AVX512_BF16 CPUs; a bf16 cache and whole 32-value vectors either way."""
    return T.isa() == "avx512_bf16" and kv_dtype == "bfloat16" and d % 32 == 0


@pytest.mark.parametrize("kv_dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "nq{}-h{}-kv{}-d{}-len{}-bs{}-w{}".format(*c))
def test_paged_attention(case, kv_dtype):
    nq, nh, nkv, d, length, bs, window = case
    q, k, v, block_ids, scale = ref.attention_inputs(case)
    got = T.paged_attention(q, k, v, bs, block_ids, kv_dtype, scale, window)
    assert got.shape == (nq, nh * d)
    _check_attention(got, q, k, v, scale, window, kv_dtype)


@pytest.mark.parametrize("kv_dtype", DTYPES)
@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "nq{}-h{}-kv{}-d{}-len{}-bs{}-w{}".format(*c))
def test_paged_attention_writes_the_new_rows(case, kv_dtype):
    """The queries' own keys and values handed to the call (as the model's forward does: written
    by each work unit where a sequence's tokens are one unit, before any unit otherwise) give the
    bits of a cache written beforehand: every query reads its own key and value."""
    nq, nh, nkv, d, length, bs, window = case
    q, k, v, block_ids, scale = ref.attention_inputs(case)
    before = T.paged_attention(q, k, v, bs, block_ids, kv_dtype, scale, window)
    np.testing.assert_array_equal(T.paged_attention(q, k, v, bs, block_ids, kv_dtype, scale, window, write_new=True),
                                  before)


def _check_attention(got, q, k, v, scale, window, kv_dtype, **kw):
    """got against the float64 reference over the cache's stored values, within what the kernel
    rounds on this CPU."""
    d, length = q.shape[2], k.shape[0]
    k_stored, v_stored = ref.round_to(k, kv_dtype), ref.round_to(v, kv_dtype)
    if kv_dtype == "bfloat16" and T.isa() == "avx512_bf16":
        # With AVX512_BF16, q . k over a bf16 cache is a bf16 dot product: the scaled query is
        # rounded to bf16 (as vLLM's bf16 attention does) and accumulated in float32.
        q_scaled = ref.round_bf16((q * np.float32(scale)).astype(np.float32))
        want = ref.attention(q_scaled, k_stored, v_stored, 1.0, window, **kw)
    else:
        want = ref.attention(q, k_stored, v_stored, scale, window, **kw)
    atol = 1e-4
    if _bf16_probabilities(d, kv_dtype):
        # Probabilities rounded to bf16 (each within 2^-9).
        atol += 2.0**-8 * float(np.abs(v_stored).max())
        if length >= 32:  # so many probabilities are not all bf16 values: the bf16 path ran
            assert np.abs(got - want).max() > 1e-6
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("kv_dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,dim", [(9, 3, 64), (4, 1, 32), (8, 2, 128)])
def test_paged_attention_row_does_not_depend_on_its_batch(kv_dtype, heads, kv_heads, dim):
    # A token's attention is the same bits whether it comes with the whole prompt (a cold
    # prefill), with a few drafts (verification) or alone (decode, or the one token a prefix-cache
    # hit leaves to compute): a seeded request repeats itself whatever the cache held. (Under 128
    # keys: longer contexts of few sequences split their keys over the threads.)
    length = 100
    q, k, v, block_ids, scale = ref.attention_inputs((length, heads, kv_heads, dim, length, 16, 0))
    full = T.paged_attention(q, k, v, 16, block_ids, kv_dtype, scale, 0)
    for n in [1, 4, 20]:
        np.testing.assert_array_equal(T.paged_attention(q[-n:], k, v, 16, block_ids, kv_dtype, scale, 0,
                                                        write_new=True), full[-n:], err_msg=str(n))


@pytest.mark.parametrize("kv_dtype", DTYPES)
@pytest.mark.parametrize("case", [ATTN_CASES[10], ATTN_CASES[11], ATTN_CASES[15], ATTN_CASES[18]],
                         ids=["decode", "split", "prefill", "window"])
def test_paged_attention_softcap_and_sinks_on_bf16_paths(case, kv_dtype):
    """Capped scores and sinks together, on the paths a bf16 cache takes (AMX tiles where the
    CPU has them)."""
    nq, nh, nkv, d, length, bs, window = case
    q, k, v, block_ids, _ = ref.attention_inputs(case)
    scale, sinks = 0.5, np.linspace(1.0, 5.0, nh).astype(np.float32)
    got = T.paged_attention(q, k, v, bs, block_ids, kv_dtype, scale, window, softcap=2.0, sinks=sinks)
    _check_attention(got, q, k, v, scale, window, kv_dtype, softcap=2.0, sinks=sinks)
    assert np.abs(got - ref.attention(q, k, v, scale, window)).max() > 1e-2


@pytest.mark.parametrize("case", [ATTN_CASES[1], ATTN_CASES[3], ATTN_CASES[5], ATTN_CASES[7]],
                         ids=["prefill", "decode", "window", "split"])
def test_paged_attention_softcap(case):
    """Gemma 2's capped scores, with the scale large enough that the cap of 2 bites."""
    nq, nh, nkv, d, length, bs, window = case
    q, k, v, block_ids, _ = ref.attention_inputs(case)
    scale = 3.0
    got = T.paged_attention(q, k, v, bs, block_ids, "float32", scale, window, softcap=2.0)
    np.testing.assert_allclose(got, ref.attention(q, k, v, scale, window, softcap=2.0), rtol=1e-4, atol=1e-4)
    assert np.abs(got - ref.attention(q, k, v, scale, window)).max() > 1e-2


@pytest.mark.parametrize("case", [ATTN_CASES[1], ATTN_CASES[3], ATTN_CASES[5], ATTN_CASES[7]],
                         ids=["prefill", "decode", "window", "split"])
def test_paged_attention_sinks(case):
    """gpt-oss's sinks: one logit per head in the denominator, merged across key parts too."""
    nq, nh, nkv, d, length, bs, window = case
    q, k, v, block_ids, scale = ref.attention_inputs(case)
    sinks = np.linspace(1.0, 5.0, nh).astype(np.float32)
    got = T.paged_attention(q, k, v, bs, block_ids, "float32", scale, window, sinks=sinks)
    np.testing.assert_allclose(got, ref.attention(q, k, v, scale, window, sinks=sinks), rtol=1e-4, atol=1e-4)
    assert np.abs(got - ref.attention(q, k, v, scale, window)).max() > 1e-2


def test_paged_attention_rejects_bad_group():
    q = np.ones((1, 3, 8), dtype=np.float32)
    k = np.ones((4, 2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="multiple"):
        T.paged_attention(q, k, k, 4, [0], "float32", 1.0, 0)
