"""Which row counts share a cuBLASLt plan. Needs the CUDA test module but no GPU."""

from __future__ import annotations

import pytest

cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")


def test_small_row_counts_keep_plans_of_their_own():
    assert [cuda.gemm_row_bucket(m) for m in range(1, 65)] == list(range(1, 65))


def test_larger_row_counts_share_four_buckets_per_doubling():
    assert [cuda.gemm_row_bucket(m) for m in (65, 80, 81, 128, 129, 160, 161, 8191, 8192, 8193)] == [
        80, 80, 96, 128, 160, 160, 192, 8192, 8192, 10240]
    buckets = {cuda.gemm_row_bucket(m) for m in range(1, 131073)}
    assert len(buckets) == 64 + 4 * 11  # up to 128k rows: a bounded number of plans per shape
    assert all(cuda.gemm_row_bucket(m) >= m for m in range(1, 20000))
