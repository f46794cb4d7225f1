"""The device communicator (NCCL, and the custom all-reduce over CUDA IPC) between 2 rank
processes, each on its own GPU: all_reduce (every dtype, sizes under and over the custom
all-reduce's threshold, with and without --disable-custom-all-reduce), all_gather, broadcast,
barrier, and an all-reduce captured in a CUDA graph and replayed, against float64 references.
NCCL refuses two ranks on one GPU, so these need 2 GPUs."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest

from cserve import _core
from cserve.cuda_libs import find_nccl

if _core.resolve_device("auto")[0] != "cuda":
    pytest.skip("no CUDA device here", allow_module_level=True)
try:
    _core.resolve_device("cuda:1")
except ValueError:
    pytest.skip("needs 2 GPUs (NCCL takes one GPU per rank)", allow_module_level=True)

SIZES = [1, 1000, 65536 + 3, 3_000_000]  # the last is over the custom all-reduce's 8 MiB in f32
TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 1e-1}


def _data(rank: int, n: int, call: int) -> np.ndarray:
    return np.random.default_rng(1000 * call + rank).standard_normal(n).astype(np.float32)


def _rank(rank, world, name, custom, results):
    if find_nccl():
        os.environ.setdefault("CSERVE_NCCL_LIBRARY", find_nccl())
    from cserve import _core

    g = _core.testing.DeviceGroup(f"cuda:{rank}", name, rank, world, custom_all_reduce=custom, timeout_s=60.0)
    out = {"all_reduce": [], "graph": []}
    call = 0
    for dtype in ("float32", "float16", "bfloat16"):
        for n in SIZES:
            call += 1
            out["all_reduce"].append((dtype, n, call, np.asarray(g.all_reduce(_data(rank, n, call).tolist(), dtype))))
    out["all_gather"] = np.asarray(g.all_gather(_data(rank, 777, 0).tolist()))
    out["broadcast"] = np.asarray(g.broadcast(_data(rank, 5000, 1).tolist(), world - 1))
    g.barrier()
    out["graph"] = [np.asarray(v) for v in g.graph_all_reduce([_data(rank, 4096, 50 + i).tolist() for i in range(10)])]
    g.barrier()
    results.put((rank, out))


@pytest.mark.parametrize("custom", [True, False], ids=["custom", "nccl-only"])
def test_collectives_between_two_gpus(custom):
    world = 2
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    name = f"cserve-devcomm-test-{os.getpid()}-{int(custom)}"
    procs = [ctx.Process(target=_rank, args=(r, world, name, custom, results)) for r in range(world)]
    for p in procs:
        p.start()
    got = dict(results.get(timeout=600) for _ in range(world))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in range(world):
        for dtype, n, call, out in got[r]["all_reduce"]:
            want = sum(_data(q, n, call).astype(np.float64) for q in range(world))
            np.testing.assert_allclose(out, want, atol=TOL[dtype] * 4, rtol=TOL[dtype], err_msg=f"{dtype} n={n}")
        np.testing.assert_array_equal(got[r]["all_gather"], np.concatenate([_data(q, 777, 0) for q in range(world)]))
        np.testing.assert_array_equal(got[r]["broadcast"], _data(world - 1, 5000, 1))
        for i, out in enumerate(got[r]["graph"]):
            want = sum(_data(q, 4096, 50 + i).astype(np.float64) for q in range(world))
            np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
    # Every rank gets bitwise the same all_reduce result.
    for a, b in zip(got[0]["all_reduce"], got[1]["all_reduce"]):
        np.testing.assert_array_equal(a[3], b[3])
