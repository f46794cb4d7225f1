"""The quantized GEMM of the CUDA backend (cuda/quant) against NumPy: weights as 4- or 8-bit codes u
with per-block (32) scales d and offsets m (w = d * u + m), f16 or f32 scales, with and without
bias, act-order (k_order) and accumulation; the GEMV kernel (small batches) and the tile path
(bf16 tiles into cuBLASLt) at every shape. Skipped without a GPU."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import numerics as ref

cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")
if cuda.device_count() == 0:
    pytest.skip("no CUDA device here", allow_module_level=True)


@pytest.fixture(scope="module")
def library():
    from cserve.cuda_libs import find_cublaslt

    return find_cublaslt()


def make_weight(rng, n: int, k: int, bits: int, half_scales: bool):
    u = rng.integers(0, 1 << bits, size=(n, k), dtype=np.uint8)
    d = rng.uniform(0.001, 0.02, size=(n, k // 32)).astype(np.float32) * rng.choice([-1, 1], size=(n, k // 32))
    m = -d * (1 << (bits - 1)) + rng.normal(0, 0.002, size=(n, k // 32))  # near-symmetric, as real checkpoints
    if half_scales:
        d, m = d.astype(np.float16), m.astype(np.float16)
    return u, d.astype(np.float32), m.astype(np.float32)


def dequantized(u, d, m, k_order=None):
    """W in the natural column order: value j of a row multiplies input k_order[j]."""
    w = np.repeat(d, 32, axis=1).astype(np.float64) * u + np.repeat(m, 32, axis=1)
    if k_order is None:
        return w
    natural = np.empty_like(w)
    natural[:, k_order] = w
    return natural


def bound(x, u, d, m, k_order=None):
    """sum |x| (|d| u + |m|): the size of every partial sum (d * sum(x u) and m * sum(x) may cancel)."""
    return np.abs(x).astype(np.float64) @ dequantized(u, np.abs(d), np.abs(m), k_order).T


def check(u, d, m, x, bits, half_scales, path, library, bias=None, k_order=None, y0=None, x_pad=0):
    got = cuda.quant_linear(u, d, m, x, bits, half_scales, bias, k_order, y0, path, x_pad, library)
    gemv = path == "gemv" or (path == "auto" and x.shape[0] <= cuda.quant_gemv_max_rows())
    w = dequantized(u, d, m, k_order)
    if gemv:  # f32 codes and activations, f32 sums
        want = x.astype(np.float64) @ w.T
        tol = 2e-5 * bound(x, u, d, m, k_order) + 1e-6
    else:  # x and the dequantized tile rounded to bf16, f32 accumulation
        w_f32 = np.repeat(d, 32, axis=1) * u.astype(np.float32) + np.repeat(m, 32, axis=1)
        w_bf16 = ref.round_bf16(w_f32.astype(np.float32)).astype(np.float64)
        if k_order is not None:
            natural = np.empty_like(w_bf16)
            natural[:, k_order] = w_bf16
            w_bf16 = natural
        want = ref.round_bf16(x).astype(np.float64) @ w_bf16.T
        tol = 1e-4 * bound(x, u, d, m, k_order) + 1e-6
    if bias is not None:
        want = want + bias
    if y0 is not None:
        want = want + y0
    err = np.abs(got - want)
    assert (err <= tol).all(), f"max error {err.max()} (tolerance there {tol.flat[err.argmax()]})"


@pytest.mark.parametrize("n", [1, 17, 256])
@pytest.mark.parametrize("k", [32, 96, 4096])
@pytest.mark.parametrize("m", [1, 2, 7, 16, 64, 300])
@pytest.mark.parametrize("bits, half_scales", [(4, True), (4, False), (8, True), (8, False)],
                         ids=["q4-f16", "q4-f32", "q8-f16", "q8-f32"])
def test_matches_numpy(library, m, k, n, bits, half_scales):
    rng = np.random.default_rng(m * 7919 + k * 31 + n + bits + half_scales)
    u, d, mins = make_weight(rng, n, k, bits, half_scales)
    x = rng.standard_normal((m, k)).astype(np.float32)
    check(u, d, mins, x, bits, half_scales, "auto", library)
    # Bias, act-order and accumulation together (the backend's path picks by m).
    bias = rng.standard_normal(n).astype(np.float32)
    order = rng.permutation(k).astype(np.int32)
    y0 = rng.standard_normal((m, n)).astype(np.float32)
    check(u, d, mins, x, bits, half_scales, "auto", library, bias=bias, k_order=order, y0=y0)


@pytest.mark.parametrize("path", ["gemv", "tiles"])
@pytest.mark.parametrize("m", [1, 7, 33, 300])
@pytest.mark.parametrize("bits", [4, 8])
def test_both_paths_at_every_batch(library, path, m, bits):
    """Either path for any m (the backend picks by m; the benchmark times both)."""
    rng = np.random.default_rng(m + bits)
    n, k = 256, 4096
    u, d, mins = make_weight(rng, n, k, bits, half_scales=bits == 4)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    order = rng.permutation(k).astype(np.int32)
    check(u, d, mins, x, bits, bits == 4, path, library, bias=bias, k_order=order)


@pytest.mark.parametrize("path", ["gemv", "tiles"])
def test_unaligned_activation_rows(library, path):
    """x rows one float off 16-byte alignment (a strided view): the GEMV kernel gets an aligned copy."""
    rng = np.random.default_rng(3)
    u, d, mins = make_weight(rng, 40, 96, 4, False)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    check(u, d, mins, x, 4, False, path, library, x_pad=1)


def test_tiles_span_large_weights(library):
    """More rows than one 32 MiB bf16 tile holds at k = 4096 (4096 rows): several tiles, the last partial."""
    rng = np.random.default_rng(9)
    n, k = 4096 + 300, 4096
    u, d, mins = make_weight(rng, n, k, 4, True)
    x = rng.standard_normal((40, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    check(u, d, mins, x, 4, True, "tiles", library, bias=bias)


@pytest.mark.parametrize("bits", [4, 8])
def test_gather_rows(bits):
    rng = np.random.default_rng(bits)
    n, k = 50, 96
    u, d, mins = make_weight(rng, n, k, bits, False)
    order = rng.permutation(k).astype(np.int32)
    ids = [0, 49, 7, 7]
    for k_order in (None, order):
        got = cuda.quant_gather_rows(u, d, mins, bits, False, k_order, ids)
        np.testing.assert_allclose(got, dequantized(u, d, mins, k_order)[ids], rtol=1e-6, atol=1e-7)
