"""The backend ops that make tensor parallelism's vocabulary shards device-neutral
(Backend::zero_rows_outside and copy_rows_strided) against NumPy, on the CPU backend and, where a
GPU is visible, on the CUDA one."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import _core

t = _core.testing
DEVICES = ["cpu"] + (["cuda"] if _core.resolve_device("auto")[0] == "cuda" else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,cols,begin,end", [(1, 1, 0, 1), (7, 33, 10, 20), (64, 1000, 0, 50), (5, 3, 40, 40)])
def test_zero_rows_outside(device, rows, cols, begin, end):
    rng = np.random.default_rng(rows * cols)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    ids = rng.integers(0, 60, rows).astype(np.int32)
    ids[0] = begin  # the first id of the range is inside, its end outside
    if rows > 1:
        ids[1] = end
    want = x.copy()
    want[(ids < begin) | (ids >= end)] = 0.0
    got = t.zero_rows_outside(device, x, ids.tolist(), begin, end)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,src_cols,cols,dst_cols,offset", [(1, 1, 1, 1, 0), (3, 8, 8, 24, 16), (5, 10, 7, 30, 11),
                                                                (4, 6, 0, 6, 6)])
def test_copy_rows_strided(device, rows, src_cols, cols, dst_cols, offset):
    rng = np.random.default_rng(rows + cols)
    src = rng.standard_normal((rows, src_cols)).astype(np.float32)
    dst = rng.standard_normal((rows, dst_cols)).astype(np.float32)
    want = dst.copy()
    want[:, offset:offset + cols] = src[:, :cols]
    np.testing.assert_array_equal(t.copy_rows_strided(device, src, dst, rows, cols, offset), want)


def test_copy_rows_strided_refuses_a_block_that_does_not_fit():
    src = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        t.copy_rows_strided("cpu", src, np.zeros((2, 4), np.float32), 2, 4, 1)


def test_a_device_communicator_needs_a_device_backend():
    with pytest.raises(NotImplementedError, match="host memory"):
        t.make_device_communicator("cpu")
