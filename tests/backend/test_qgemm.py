"""Quantized weights (ggml block formats) on the CPU: dequantization against the gguf
package's, and the quantized GEMM against dequantize-then-float32.

No torch here, so tests/backend/test_isa.py reruns this module under each CSERVE_ISA level."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf import quants  # noqa: E402

from cserve._core import testing as T  # noqa: E402

SIMPLE = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]  # the gguf package quantizes these
K_QUANTS = [Q.Q4_K, Q.Q5_K, Q.Q6_K]  # random blocks with sane scales
FOUR_BIT = {Q.Q4_0, Q.Q4_1, Q.Q4_K}


def f16_bytes(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint8).reshape(values.shape[0], -1)


def random_k_blocks(qtype: Q, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Raw K-quant blocks: random codes and sub-block scales, small positive f16 super-scales."""
    per_row = k // 256
    size = quants.GGML_QUANT_SIZES[qtype][1]
    blocks = rng.integers(0, 256, size=(rows * per_row, size), dtype=np.uint8)
    d = f16_bytes(rng.uniform(0.001, 0.02, rows * per_row))
    if qtype == Q.Q6_K:
        blocks[:, 208:210] = d
    else:
        blocks[:, 0:2] = d
        blocks[:, 2:4] = f16_bytes(rng.uniform(0.001, 0.02, rows * per_row))
    return blocks.reshape(rows, per_row * size)


def make_weight(qtype: Q, rows: int, k: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """(raw ggml bytes, the gguf package's dequantization)."""
    if qtype in K_QUANTS:
        raw = random_k_blocks(qtype, rows, k, rng)
    else:
        raw = quants.quantize(rng.standard_normal((rows, k)).astype(np.float32), qtype)
    return raw.tobytes(), quants.dequantize(raw, qtype).reshape(rows, k).astype(np.float32)


def quantize_acts(x: np.ndarray) -> np.ndarray:
    """What the kernel multiplies by: x rounded to int8 codes per block of 32, times the block scale."""
    m, k = x.shape
    blocks = x.reshape(m, k // 32, 32)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    scale = amax / 127.0
    q = np.rint(np.divide(blocks, scale, out=np.zeros_like(blocks), where=scale > 0))
    return (q * scale).reshape(m, k)


@pytest.mark.parametrize("qtype", SIMPLE + K_QUANTS, ids=lambda t: t.name)
def test_dequantize_matches_gguf(qtype):
    rng = np.random.default_rng(int(qtype))
    k = 512
    raw, want = make_weight(qtype, 5, k, rng)
    got = T.dequantize(int(qtype), raw, 5, k)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


# Every row count of 1..17: the AVX2 and AVX-512 kernels block 1..8 rows in one pass and
# larger m in passes of a few rows plus a remainder. 4- and 8-bit codes, f16 scales (the
# simple types) and f32 scales (the K-quants).
@pytest.mark.parametrize("m", range(1, 18))
@pytest.mark.parametrize("qtype", SIMPLE + K_QUANTS, ids=lambda t: t.name)
def test_quant_linear(qtype, m):
    rng = np.random.default_rng(100 * int(qtype) + m)
    n = 37  # not a multiple of the 4-row tile
    k = 256 if qtype in K_QUANTS else 96  # 96: a padded half pair of blocks
    raw, w = make_weight(qtype, n, k, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    y, bits = T.quant_linear(int(qtype), raw, n, k, x)
    assert bits == (4 if qtype in FOUR_BIT else 8)
    scale = np.abs(x).sum(axis=1, keepdims=True) * np.abs(w).max()
    if qtype != Q.Q6_K:  # stored exactly: equal to the int8-activation product up to rounding
        exact = quantize_acts(x) @ w.T
        assert np.abs(y - exact).max() <= 1e-5 * scale.max()
    # and close to the float product (int8 activations, and Q6_K requantized to 8 bits)
    assert np.abs(y - x @ w.T).max() <= 2e-2 * scale.max() / np.sqrt(k)


def _extreme_blocks(qtype: Q, rows: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Raw blocks whose codes are all at the ends of their range (4-bit 0/15, 8-bit -128/127),
    row by row of one kind: the largest integer dot products a block can have."""
    per_row = k // 32
    if qtype == Q.Q8_0:  # f16 d, 32 int8
        blocks = np.zeros((rows, per_row, 34), dtype=np.uint8)
        blocks[:, :, 0:2] = f16_bytes(rng.uniform(0.001, 0.01, rows * per_row)).reshape(rows, per_row, 2)
        codes = np.where(rng.random((rows, 1, 1)) < 0.5, 0x80, 0x7F).astype(np.uint8)
        blocks[:, :, 2:] = codes
    else:  # Q4_1: f16 d, f16 m, 16 bytes of nibbles
        blocks = np.zeros((rows, per_row, 20), dtype=np.uint8)
        blocks[:, :, 0:2] = f16_bytes(rng.uniform(0.001, 0.01, rows * per_row)).reshape(rows, per_row, 2)
        blocks[:, :, 2:4] = f16_bytes(rng.uniform(-0.01, 0.01, rows * per_row)).reshape(rows, per_row, 2)
        blocks[:, :, 4:] = np.where(rng.random((rows, 1, 1)) < 0.5, 0x00, 0xFF).astype(np.uint8)
    return blocks.reshape(rows, -1)


@pytest.mark.parametrize("m", [1, 4, 8, 9, 17])
@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0], ids=lambda t: t.name)
def test_extreme_codes_and_activations_do_not_saturate(qtype, m):
    # Every activation of a row at +-its block maximum (int8 codes +-127) against codes at the
    # ends of their range: 16-bit intermediate sums (AVX2 maddubs) at their largest.
    rng = np.random.default_rng(31 + m)
    n, k = 40, 256
    raw = _extreme_blocks(qtype, n, k, rng)
    w = quants.dequantize(raw, qtype).reshape(n, k).astype(np.float32)
    signs = np.where(rng.random((m, 1)) < 0.5, -1.0, 1.0)
    x = (signs * rng.uniform(0.5, 2.0, (m, k // 32)).repeat(32, axis=1)).astype(np.float32)
    x[m // 2] *= np.where(np.arange(k) % 2 == 0, 1.0, -1.0).astype(np.float32)  # and one alternating row
    y, _ = T.quant_linear(int(qtype), raw.tobytes(), n, k, x)
    exact = quantize_acts(x) @ w.T
    scale = np.abs(x).sum(axis=1, keepdims=True) * np.abs(w).max()
    assert np.abs(y - exact).max() <= 1e-5 * scale.max()


def test_threads_agree():
    rng = np.random.default_rng(7)
    raw, _ = make_weight(Q.Q4_1, 130, 128, rng)
    x = rng.standard_normal((6, 128)).astype(np.float32)
    one, _ = T.quant_linear(int(Q.Q4_1), raw, 130, 128, x, num_threads=1)
    two, _ = T.quant_linear(int(Q.Q4_1), raw, 130, 128, x, num_threads=2)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0], ids=lambda t: t.name)
def test_a_row_does_not_depend_on_its_batch(qtype):
    # A verification step computes a token and its drafts together: each row must be what it
    # would be alone, bit for bit, or greedy speculation could pick another token.
    rng = np.random.default_rng(11)
    raw, _ = make_weight(qtype, 40, 128, rng)
    x = rng.standard_normal((40, 128)).astype(np.float32)
    alone = np.concatenate([T.quant_linear(int(qtype), raw, 40, 128, x[i:i + 1])[0] for i in range(40)])
    for m in [*range(2, 18), 31, 32, 33, 40]:
        np.testing.assert_array_equal(T.quant_linear(int(qtype), raw, 40, 128, x[:m])[0], alone[:m], err_msg=str(m))


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0], ids=lambda t: t.name)
def test_a_large_result_equals_small_batches(qtype):
    # 4100 x 1050 floats (over 16 MiB): the AVX-512 kernel stores such results past the caches,
    # whole 16-float rows only (the last panel's 10 columns go the usual way).
    rng = np.random.default_rng(14)
    raw, _ = make_weight(qtype, 1050, 64, rng)
    x = rng.standard_normal((4100, 64)).astype(np.float32)
    big = T.quant_linear(int(qtype), raw, 1050, 64, x, num_threads=2)[0]
    small = np.concatenate([T.quant_linear(int(qtype), raw, 1050, 64, x[i:i + 16])[0] for i in range(0, 4100, 16)])
    np.testing.assert_array_equal(big, small)


def test_unsupported_type_is_an_error():
    with pytest.raises(NotImplementedError, match="ggml type"):
        T.dequantize(16, b"\0" * 64, 1, 256)  # IQ2_XXS
