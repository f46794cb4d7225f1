"""The custom all-reduce (cuda/comm) as tensor parallelism uses it on GPUs: captured in a CUDA
graph with its device epoch counter and replayed many times, interleaved with eager calls, between
2 rank processes on one GPU (as the lent machine has); and a barrier whose peer never comes gives
up after its timeout instead of hanging."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")
if cuda.device_count() == 0:
    pytest.skip("no CUDA device here", allow_module_level=True)

REPLAYS = 20


def _data(rank: int, call: int, n: int) -> np.ndarray:
    return np.random.default_rng(100 * call + rank).standard_normal(n).astype(np.float32)


def _graph_rank(rank, world, n, two_shot, handles_in, handles_out, results):
    from cserve import _cuda

    ar = _cuda.IpcAllReduce(rank, world, buffer_bytes=64 * 1024, timeout_s=60.0)  # n may need chunks
    handles_out.put((rank, ar.handles()))
    ar.open(handles_in.get())
    out = ar.graph_all_reduce([_data(rank, c, n) for c in range(REPLAYS)], two_shot=two_shot, eager_between=True)
    results.put((rank, [np.asarray(o) for o in out]))


def _spawn(target, world, *args):
    ctx = mp.get_context("spawn")
    to_ranks = [ctx.Queue() for _ in range(world)]
    from_ranks, results = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, *args, to_ranks[r], from_ranks, results))
             for r in range(world)]
    for p in procs:
        p.start()
    handles = dict(from_ranks.get(timeout=120) for _ in range(world))
    for q in to_ranks:
        q.put([handles[r] for r in range(world)])
    return procs, results


@pytest.mark.parametrize("n,two_shot", [(1, False), (4099, False), (40_000, True)])
def test_graph_replays_and_eager_calls_interleave(n, two_shot):
    world = 2
    procs, results = _spawn(_graph_rank, world, n, two_shot)
    got = dict(results.get(timeout=300) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(world):
        assert len(got[r]) == 2 * REPLAYS
        for i, out in enumerate(got[r]):
            call = i // 2  # each replay, then the eager call of the same input
            want = sum(_data(q, call, n).astype(np.float64) for q in range(world))
            np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def _silent_peer_rank(rank, world, handles_in, handles_out, results):
    from cserve import _cuda

    ar = _cuda.IpcAllReduce(rank, world, buffer_bytes=4096, timeout_s=2.0)
    handles_out.put((rank, ar.handles()))
    ar.open(handles_in.get())
    if rank == 0:
        ar.all_reduce(np.ones(16, np.float32))  # rank 1 never calls: the barrier must give up
        results.put((rank, ar.timed_out()))
    else:
        import time

        results.put((rank, None))
        time.sleep(10)  # alive, with its memory mapped, but silent while rank 0 waits


def test_a_barrier_without_its_peer_times_out():
    procs, results = _spawn(_silent_peer_rank, 2)
    got = dict(results.get(timeout=120) for _ in range(2))
    assert got[0] is True
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
