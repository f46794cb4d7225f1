"""Dense GEMMs through cuBLASLt (loaded at run time) against NumPy, in every dtype. Skipped
without a GPU, and where no libcublasLt can be found (nvidia-cublas wheel, toolkit, or
CSERVE_CUBLASLT)."""

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

    lib = find_cublaslt()
    try:
        cuda.gemm(np.ones((16, 16), np.float32), np.ones((1, 16), np.float32), "float32", None, lib)
    except RuntimeError as e:
        if "cannot load cuBLASLt" in str(e):
            pytest.skip(str(e))
        raise
    return lib


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
@pytest.mark.parametrize("m, n, k", [(1, 4096, 4096), (16, 14336, 4096), (512, 4096, 14336), (3, 128256, 4096),
                                     (7, 33, 40)])
def test_gemm_matches_numpy(library, dtype, m, n, k):
    rng = np.random.default_rng(m + n + k)
    w = ref.round_to(rng.standard_normal((n, k)).astype(np.float32) * 0.02, dtype)
    x = ref.round_to(rng.standard_normal((m, k)).astype(np.float32), dtype)
    y, loaded = cuda.gemm(w, x, dtype, None, library)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    # f32 accumulation; the output rounded to dtype.
    scale = np.abs(x).max() * np.abs(w).max() * np.sqrt(k)
    np.testing.assert_allclose(y, want, rtol=ref.UNIT[dtype] * 4, atol=scale * max(ref.UNIT[dtype], 1e-6) * 4)
    assert "cublasLt" in loaded


def test_gemm_accumulates(library):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    y0 = rng.standard_normal((5, 64)).astype(np.float32)
    y, _ = cuda.gemm(w, x, "float32", y0, library)
    np.testing.assert_allclose(y, y0 + x @ w.T, rtol=1e-4, atol=1e-3)


def test_mixed_bf16_into_f32(library):
    """bf16 x bf16 into an f32 y, as the CUDA backend multiplies (f32 activations)."""
    rng = np.random.default_rng(4)
    w = ref.round_bf16(rng.standard_normal((300, 128)).astype(np.float32))
    x = ref.round_bf16(rng.standard_normal((7, 128)).astype(np.float32))
    got = cuda.gemm_mixed(w, x, "bfloat16", library)
    np.testing.assert_allclose(got, x @ w.T, rtol=1e-5, atol=1e-4)


def test_kernel_benchmarks_run(library):
    assert cuda.bench_copy(1 << 20, 3) > 0
    assert cuda.bench_decode_attention(4, 100, 8, 2, 64, "fp8", 3) > 0


def test_row_counts_share_bucketed_plans(library):
    # Every prefill length a server meets: one plan per bucket of row counts, and each
    # product right with its bucket's algorithm (or the exact heuristic's where it differs).
    rng = np.random.default_rng(11)
    n, k = 256, 512
    w = ref.round_bf16(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
    x = ref.round_bf16(rng.standard_normal((700, k)).astype(np.float32))
    counts = [*range(1, 70), 70, 80, 81, 100, 127, 128, 129, 200, 255, 256, 257, 511, 512, 513, 699, 700]
    outs, plans = cuda.gemm_row_counts(w, x, counts, "bfloat16", library)
    assert plans == len({cuda.gemm_row_bucket(m) for m in counts})
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    for m, y in zip(counts, outs):
        np.testing.assert_allclose(y, want[:m], rtol=1e-3, atol=1e-3)
