"""The custom all-reduce (cuda/comm) between rank processes on the GPU(s) here, through CUDA IPC:
2 and 3 ranks on one GPU (as the lent machine has; each process its own context), one-shot and
two-shot, f32 / f16 / bf16, sizes from 1 element to more than the registered buffer (chunks),
many calls in a row (epochs), against float64 sums of what every rank sent."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")
if cuda.device_count() == 0:
    pytest.skip("no CUDA device here", allow_module_level=True)

SIZES = [1, 7, 1000, 4099, 65536 + 3, 300_000]
TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 1e-1}


def _data(rank: int, size: int, call: int) -> np.ndarray:
    return np.random.default_rng(1000 * call + rank).standard_normal(size).astype(np.float32)


def _rank(rank: int, world: int, handles_in, handles_out, results) -> None:
    from cserve import _cuda

    ar = _cuda.IpcAllReduce(rank, world, buffer_bytes=256 * 1024)  # small: the larger sizes go in chunks
    handles_out.put((rank, ar.handles()))
    ar.open(handles_in.get())
    out = []
    call = 0
    for dtype in ("float32", "float16", "bfloat16"):
        for two_shot in (False, True):
            for n in SIZES:
                call += 1
                out.append((dtype, two_shot, n, ar.all_reduce(_data(rank, n, call), dtype, two_shot)))
    results.put((rank, out))


@pytest.mark.parametrize("world", [2, 3])
def test_ipc_all_reduce_between_processes(world):
    ctx = mp.get_context("spawn")
    to_ranks = [ctx.Queue() for _ in range(world)]
    from_ranks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, world, to_ranks[r], from_ranks, results)) for r in range(world)]
    for p in procs:
        p.start()
    handles = dict(from_ranks.get(timeout=120) for _ in range(world))
    for q in to_ranks:
        q.put([handles[r] for r in range(world)])
    got = dict(results.get(timeout=600) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    call = 0
    for i, (dtype, two_shot, n, _) in enumerate(got[0]):
        call += 1
        want = sum(_data(r, n, call).astype(np.float64) for r in range(world))
        for r in range(world):
            np.testing.assert_allclose(got[r][i][3], want, atol=TOL[dtype] * world, rtol=TOL[dtype],
                                       err_msg=f"{dtype} two_shot={two_shot} n={n} rank {r}")
        # every rank holds the same sum
        for r in range(1, world):
            np.testing.assert_array_equal(got[r][i][3], got[0][i][3])
