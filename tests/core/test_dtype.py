"""The core's dtype conversions: fp8 KV cache formats against a NumPy reference (the one the CUDA
kernel tests use), bf16 and f16 as before."""

import numpy as np
import pytest

from cserve import _core
from tests.helpers import numerics as ref


def values(rng) -> np.ndarray:
    parts = [
        rng.standard_normal(4000) * 4,
        rng.standard_normal(1000) * 1e-3,            # subnormals of both formats
        np.ldexp(rng.integers(1, 64, 500), rng.integers(-20, 10, 500)) * 1.0,  # exact grid points, ties
        np.array([0.0, -0.0, 448.0, -448.0, 460.0, 1e9, -1e9, 57344.0, 70000.0, 2.0**-9, 2.0**-10, 2.0**-17]),
    ]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "fp8", "fp8_e5m2"])
def test_fp8_round_trip_matches_the_reference(dtype):
    x = values(np.random.default_rng(0))
    fmt = "fp8_e4m3" if dtype == "fp8" else dtype
    got = _core.testing.round_to_dtype(x, dtype)
    np.testing.assert_array_equal(got, ref.round_fp8(x, fmt))


def test_fp8_saturates_and_keeps_nan():
    x = np.array([1e30, -1e30, np.inf, np.nan], dtype=np.float32)
    got = _core.testing.round_to_dtype(x, "fp8_e4m3")
    assert list(got[:3]) == [448.0, -448.0, 448.0] and np.isnan(got[3])
    assert list(_core.testing.round_to_dtype(x[:2], "fp8_e5m2")) == [57344.0, -57344.0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_other_dtypes_round_as_numpy(dtype):
    x = values(np.random.default_rng(1))[:4000]
    np.testing.assert_array_equal(_core.testing.round_to_dtype(x, dtype), ref.round_to(x, dtype))


def test_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype"):
        _core.testing.round_to_dtype(np.ones(2, np.float32), "fp4")


def test_bf16_rounds_to_nearest_even_and_keeps_inf_and_nan():
    # Every value of values() (ties included), infinities and NaNs (a signaling one comes back
    # quiet), 6517 of them: the vector loop and its tail.
    special = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7F7FFFFF],
                       dtype=np.uint32).view(np.float32)
    x = np.concatenate([values(np.random.default_rng(2)), special])
    got = _core.testing.round_to_dtype(x, "bfloat16")
    finite = np.isfinite(x) | np.isinf(x)
    np.testing.assert_array_equal(got[finite], ref.round_bf16(x[finite]))
    assert np.isnan(got[~finite]).all() and (~finite).sum() == 3
    assert list(got[-6:-4]) == [np.inf, -np.inf]
