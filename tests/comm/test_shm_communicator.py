"""The shared-memory communicator (cpp/comm) through cserve._core.comm.

Ranks run as threads of this process and as separate processes. all_reduce results are checked
bit for bit against the sum numpy computes in float32 in rank order (then rounded to the dtype),
which every rank must return, and against a float64 reference within the dtype's tolerance.
Sizes run from one element to tens of MB, past the staging buffer (chunks), in every dtype; a
rank that dies, hangs or never comes makes the others raise TimeoutError, and no /dev/shm entry
is left behind.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
import uuid

import numpy as np
import pytest

from cserve._core import comm

DTYPES = ("float32", "float16", "bfloat16")
# Odd sizes around the vector widths, the one-shot/two-shot switch (64 KiB) and the default
# 2 MiB staging slot.
SIZES = (1, 2, 3, 5, 17, 31, 63, 100, 1001, 4099, 16383, 16385, 32769, 65537, 100_003, 524_289, 1_048_583)
BIG = 10_000_019  # 40 MB of float32, 20 MB of bfloat16
SMALL_ITERATIONS = 3000


def group_name() -> str:
    return f"cserve-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def shm_entry(name: str) -> bool:
    return os.path.exists(f"/dev/shm/{name}")


# --- numerics --------------------------------------------------------------------------------


def to_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (x.astype(np.uint32) << 16).view(np.float32)
    return x.astype(np.float32)


def from_f32(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> dtype, rounding to nearest even (bfloat16 as uint16 bits)."""
    if dtype == "float32":
        return x.astype(np.float32)
    if dtype == "float16":
        return x.astype(np.float16)
    u = x.astype(np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = ((u >> 16) | 0x40).astype(np.uint16)
    return np.where((u & 0x7FFFFFFF) > 0x7F800000, nan, rounded)


def call_dtype(dtype: str) -> str:
    return "bfloat16" if dtype == "bfloat16" else ""


def expected_sum(inputs: list[np.ndarray], dtype: str) -> np.ndarray:
    """What every rank must return: the float32 sum in rank order, rounded to the dtype."""
    with np.errstate(invalid="ignore", over="ignore"):
        acc = to_f32(inputs[0], dtype).copy()
        for x in inputs[1:]:
            acc += to_f32(x, dtype)
        return from_f32(acc, dtype)


HALF_ULP = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}
SUBNORMAL_STEP = {"float32": 0.0, "float16": 2.0**-25, "bfloat16": 0.0}


def check_all_reduce(got: np.ndarray, inputs: list[np.ndarray], dtype: str, what: str) -> None:
    want = expected_sum(inputs, dtype)
    bits = np.uint32 if dtype == "float32" else np.uint16
    same = got.view(bits) == want.view(bits)
    both_nan = np.isnan(to_f32(got, dtype)) & np.isnan(to_f32(want, dtype))
    bad = ~(same | both_nan)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"{what}: element {i} of {got.size}: got {to_f32(got, dtype)[i]!r}, "
                             f"want {to_f32(want, dtype)[i]!r} ({int(bad.sum())} differ)")
    # And within the dtype's rounding of the exact (float64) sum, where that is finite.
    xs = [to_f32(x, dtype).astype(np.float64) for x in inputs]
    ref = np.sum(xs, axis=0)
    magnitude = np.sum(np.abs(xs), axis=0)
    finite = np.isfinite(ref) & np.isfinite(to_f32(got, dtype))
    err = np.abs(to_f32(got, dtype).astype(np.float64) - ref)
    tol = 1.01 * (HALF_ULP[dtype] * np.abs(ref) + len(inputs) * 2.0**-24 * magnitude) + SUBNORMAL_STEP[dtype]
    assert (err[finite] <= tol[finite]).all(), f"{what}: off the float64 reference by {err[finite].max()}"


class Inputs:
    """Every rank's inputs, the same on every rank (shared seeds): windows of per-rank pools of
    normal values over six decades (float16: down into its subnormals)."""

    def __init__(self, seed: int, size: int, pool: int):
        rng = np.random.default_rng(seed)
        self.pool = pool
        exponent = rng.uniform(-3, 3, pool).astype(np.float32)
        self.mag = {"float32": 10.0**exponent, "bfloat16": 10.0**exponent, "float16": 10.0 ** (exponent - 2.5)}
        self.base = [np.random.default_rng([seed, q]).standard_normal(pool, dtype=np.float32) for q in range(size)]

    def get(self, n: int, offset: int, dtype: str) -> list[np.ndarray]:
        off = offset % (self.pool - n + 1)
        mag = self.mag[dtype][off:off + n]
        return [from_f32(b[off:off + n] * mag, dtype) for b in self.base]


# --- what each rank runs ---------------------------------------------------------------------


def battery(c, seed: int, big: bool) -> None:
    """all_reduce in every dtype and size, thousands of small ones, all_gather, broadcast and a
    random mix of operations."""
    r, n_ranks = c.rank, c.size
    inputs = Inputs(seed, n_ranks, (BIG if big else max(SIZES)) + 4096)
    for i, n in enumerate(SIZES + ((BIG,) if big else ())):
        for dtype in DTYPES:
            if n == BIG and dtype == "float16":
                continue
            xs = inputs.get(n, 7919 * i, dtype)
            got = xs[r].copy()
            c.all_reduce(got, call_dtype(dtype))
            check_all_reduce(got, xs, dtype, f"rank {r}/{n_ranks} all_reduce {dtype} n={n}")
    for it in range(SMALL_ITERATIONS):
        n, dtype = 1 + (it * 37) % 257, DTYPES[it % 3]
        xs = inputs.get(n, 104729 * it, dtype)
        got = xs[r].copy()
        c.all_reduce(got, call_dtype(dtype))
        check_all_reduce(got, xs, dtype, f"rank {r}/{n_ranks} all_reduce {dtype} n={n} iteration {it}")
    gather_checks(c, inputs)
    broadcast_checks(c, seed)
    mixed_sequence(c, inputs, seed)


def gather_checks(c, inputs: Inputs) -> None:
    for i, n in enumerate((1, 7, 3001, 300_007)):
        for dtype in DTYPES:
            xs = inputs.get(n, 31 * i, dtype)
            out = np.empty(c.size * n, dtype=xs[0].dtype)
            c.all_gather(xs[c.rank], out, call_dtype(dtype))
            np.testing.assert_array_equal(out.view(np.uint8), np.concatenate(xs).view(np.uint8))


def broadcast_checks(c, seed: int) -> None:
    for i, nbytes in enumerate((1, 4097, 5_000_011)):
        root = i % c.size
        want = np.random.default_rng([seed, 99, i]).integers(0, 256, nbytes, dtype=np.uint8)
        data = want.copy() if c.rank == root else np.zeros(nbytes, np.uint8)
        c.broadcast(data, root)
        np.testing.assert_array_equal(data, want)


def mixed_sequence(c, inputs: Inputs, seed: int) -> None:
    """Operations of every kind one after another, so consecutive rounds alternate buffers
    across operation kinds."""
    choice = np.random.default_rng([seed, 7]).integers(0, 4, 300)
    for it, op in enumerate(choice):
        n, dtype = 1 + (it * 53) % 2000, DTYPES[it % 3]
        xs = inputs.get(n, 613 * it, dtype)
        if op == 0:
            got = xs[c.rank].copy()
            c.all_reduce(got, call_dtype(dtype))
            check_all_reduce(got, xs, dtype, f"mixed all_reduce {it}")
        elif op == 1:
            out = np.empty(c.size * n, dtype=xs[0].dtype)
            c.all_gather(xs[c.rank], out, call_dtype(dtype))
            np.testing.assert_array_equal(out.view(np.uint8), np.concatenate(xs).view(np.uint8))
        elif op == 2:
            root = it % c.size
            data = xs[root].copy() if c.rank == root else np.zeros_like(xs[root])
            c.broadcast(data, root)
            np.testing.assert_array_equal(data.view(np.uint8), xs[root].view(np.uint8))
        else:
            c.barrier()


def spin_all_reduce(c, count: int) -> None:
    """all_reduce until it fails (a peer died) or `count` calls are done."""
    x = np.ones(1000, np.float32)
    for _ in range(count):
        c.all_reduce(x)
        x[:] = 1


JOBS = {"battery": battery, "spin_all_reduce": spin_all_reduce}


# --- running ranks ---------------------------------------------------------------------------


def run_threads(size: int, job, *args, timeout: float = 30.0, buffer_bytes: int = 0, name: str | None = None,
                start_order=None) -> list:
    """Runs job(communicator, *args) on `size` ranks as threads; returns each rank's exception
    (or None)."""
    name = name or group_name()
    errors: list = [None] * size

    def rank_main(r: int) -> None:
        try:
            job(comm.ShmCommunicator(name, r, size, timeout, buffer_bytes), *args)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors[r] = e

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(size)]
    for r in start_order or range(size):
        threads[r].start()
        if start_order:
            time.sleep(0.05)
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a rank thread hangs"
    assert not shm_entry(name), f"/dev/shm/{name} was left behind"
    return errors


def _rank_process(name: str, rank: int, size: int, timeout: float, buffer_bytes: int, job: str, args: tuple,
                  queue) -> None:
    try:
        JOBS[job](comm.ShmCommunicator(name, rank, size, timeout, buffer_bytes), *args)
        queue.put((rank, None))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put((rank, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def start_processes(name: str, ranks, size: int, job: str, args: tuple, timeout: float = 30.0,
                    buffer_bytes: int = 0):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = {r: ctx.Process(target=_rank_process, args=(name, r, size, timeout, buffer_bytes, job, args, queue))
             for r in ranks}
    for p in procs.values():
        p.start()
    return procs, queue


def collect(procs: dict, queue, wait: float = 120.0) -> dict:
    results = {}
    try:
        for _ in procs:
            rank, err = queue.get(timeout=wait)
            results[rank] = err
    finally:
        for p in procs.values():
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def raise_errors(errors) -> None:
    for e in errors:
        if e is not None:
            raise e


# --- correctness -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3, 4])
def test_ranks_as_processes(size):
    name = group_name()
    procs, queue = start_processes(name, range(size), size, "battery", (1000 + size, size == 2))
    results = collect(procs, queue)
    assert results == {r: None for r in range(size)}, "\n".join(e for e in results.values() if e)
    assert all(p.exitcode == 0 for p in procs.values())
    assert not shm_entry(name)


@pytest.mark.parametrize("size", [2, 3, 4])
def test_ranks_as_threads(size):
    raise_errors(run_threads(size, battery, 2000 + size, False))


@pytest.mark.parametrize("size", [2, 3])
def test_small_staging_buffer_chunks_every_operation(size):
    # A 4 KiB slot: every operation but the smallest runs in many rounds.
    raise_errors(run_threads(size, battery, 3000 + size, False, buffer_bytes=4096))


def test_special_values():
    def job(c):
        for dtype in DTYPES:
            big = {"float32": 3e38, "float16": 60000.0, "bfloat16": 3e38}[dtype]
            tiny = {"float32": 1e-45, "float16": 6e-8, "bfloat16": 1e-40}[dtype]
            row = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, big, -big, tiny, -tiny, 1.0, np.inf, -0.0] * 3,
                           np.float32)
            other = np.array([1.0, -np.inf, 2.0, -0.0, -0.0, big, -big, tiny, tiny, -1.0, -np.inf, 0.0] * 3,
                             np.float32)
            xs = [from_f32(row, dtype), from_f32(other, dtype)]
            got = xs[c.rank].copy()
            c.all_reduce(got, call_dtype(dtype))
            want = expected_sum(xs, dtype)
            bits = np.uint32 if dtype == "float32" else np.uint16
            nan = np.isnan(to_f32(want, dtype))
            assert np.isnan(to_f32(got, dtype)[nan]).all()
            np.testing.assert_array_equal(got.view(bits)[~nan], want.view(bits)[~nan])

    raise_errors(run_threads(2, job))


def test_single_rank_group_is_the_identity():
    c = comm.ShmCommunicator(group_name(), 0, 1, 5.0)
    x = np.random.default_rng(0).standard_normal(100_001).astype(np.float32)
    got = x.copy()
    c.all_reduce(got)
    np.testing.assert_array_equal(got, x)
    out = np.empty_like(x)
    c.all_gather(x, out)
    np.testing.assert_array_equal(out, x)
    c.broadcast(got, 0)
    c.barrier()


# --- failures --------------------------------------------------------------------------------


def test_a_rank_that_never_attaches_fails_the_group():
    # Long enough that rank 0 (which names the missing rank to the group) gets the CPU before
    # rank 1's own wait expires, even on a loaded 2-core machine.
    timeout = 3.0
    name = group_name()
    errors = [None, None]

    def rank_main(r):
        try:
            comm.ShmCommunicator(name, r, 3, timeout).all_reduce(np.ones(10, np.float32))
        except BaseException as e:  # noqa: BLE001
            errors[r] = e

    start = time.monotonic()
    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.monotonic() - start
    assert isinstance(errors[0], TimeoutError) and "rank 2" in str(errors[0]) and "attach" in str(errors[0])
    assert isinstance(errors[1], TimeoutError) and "rank 2" in str(errors[1])
    assert elapsed < timeout + 3.0
    assert not shm_entry(name)


def test_rank_zero_that_never_comes():
    name = group_name()
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="rank 0"):
        comm.ShmCommunicator(name, 1, 2, 0.5)
    assert time.monotonic() - start < 3.0
    assert not shm_entry(name)


def test_a_rank_that_stops_arriving_times_out():
    timeout = 1.5
    waited = {}

    def job(c):
        x = np.ones(4096, np.float32)
        for _ in range(3):
            c.all_reduce(x)
        if c.rank == 2:
            time.sleep(timeout + 1.0)  # alive, but gone from the group's point of view
            return
        start = time.monotonic()
        try:
            c.all_reduce(x)
        finally:
            waited[c.rank] = time.monotonic() - start
        raise AssertionError("all_reduce returned without rank 2")

    errors = run_threads(3, job, timeout=timeout)
    assert errors[2] is None
    for r in (0, 1):
        assert isinstance(errors[r], TimeoutError), errors[r]
        assert "all_reduce" in str(errors[r]) and "rank 2" in str(errors[r])
        assert waited[r] < timeout + 1.0


def test_a_killed_rank_process_fails_the_others():
    name, size, timeout = group_name(), 3, 20.0
    procs, queue = start_processes(name, (1, 2), size, "spin_all_reduce", (10**9,), timeout=timeout)
    c = comm.ShmCommunicator(name, 0, size, timeout)  # returns once every rank has attached
    assert not shm_entry(name)
    x = np.ones(1000, np.float32)
    for _ in range(50):
        c.all_reduce(x)
        x[:] = 1
    os.kill(procs[2].pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="rank 2") as info:
        for _ in range(10**6):
            c.all_reduce(x)
            x[:] = 1
    assert "all_reduce" in str(info.value)
    assert time.monotonic() - start < timeout  # noticed as an exit, not by waiting out the timeout
    results = collect({1: procs[1]}, queue)
    assert results[1] is not None and results[1].startswith("TimeoutError") and "rank 2" in results[1]
    procs[2].join()
    with pytest.raises(TimeoutError, match="failed earlier"):
        c.barrier()
    assert not shm_entry(name)


def test_a_stale_segment_is_replaced():
    name = group_name()
    # Rank 0 of a group whose other rank never comes: it creates the segment, then is killed.
    procs, _ = start_processes(name, (0,), 2, "spin_all_reduce", (1,), timeout=60.0)
    deadline = time.monotonic() + 30
    while not (shm_entry(name) and os.path.getsize(f"/dev/shm/{name}") > 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    procs[0].kill()
    procs[0].join()
    assert shm_entry(name)
    # Rank 1 starts first and must not take the dead run's segment for its group.
    raise_errors(run_threads(2, spin_all_reduce, 20, name=name, start_order=(1, 0), timeout=10.0))
    assert not shm_entry(name)


def test_abort_fails_every_rank():
    def job(c):
        if c.rank == 0:
            time.sleep(0.3)
            c.abort("the engine died")
            with pytest.raises(TimeoutError, match="the engine died"):
                c.all_reduce(np.ones(3, np.float32))
            return
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="rank 0 aborted"):
            c.all_reduce(np.ones(3, np.float32))
        assert time.monotonic() - start < 10.0

    raise_errors(run_threads(2, job, timeout=60.0))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank 2 of 2"):
        comm.ShmCommunicator(group_name(), 2, 2, 1.0)
    with pytest.raises(ValueError, match="group name"):
        comm.ShmCommunicator("a/b", 0, 1, 1.0)
    c = comm.ShmCommunicator(group_name(), 0, 1, 5.0)
    with pytest.raises(ValueError):
        c.all_reduce(np.ones(4, np.float64))
    with pytest.raises(ValueError):
        c.all_reduce(np.ones(4, np.int32))
    with pytest.raises(ValueError, match="does not match"):
        c.all_reduce(np.ones(4, np.float32), "bfloat16")
    with pytest.raises(ValueError, match="output"):
        c.all_gather(np.ones(4, np.float32), np.empty(3, np.float32))
    with pytest.raises(ValueError, match="root"):
        c.broadcast(np.ones(4, np.uint8), 1)
    c.barrier()  # still usable


def test_ranks_that_disagree_on_the_group_size():
    name = group_name()
    errors = [None]

    def wrong_rank():
        try:
            comm.ShmCommunicator(name, 1, 3, 2.0)
        except BaseException as e:  # noqa: BLE001
            errors[0] = e

    t = threading.Thread(target=wrong_rank)
    t.start()
    with pytest.raises(TimeoutError, match="rank 1"):
        comm.ShmCommunicator(name, 0, 2, 1.0)
    t.join()
    assert isinstance(errors[0], ValueError) and "2 ranks" in str(errors[0])
    assert not shm_entry(name)


def test_malformed_buffer_size_in_the_environment(monkeypatch):
    monkeypatch.setenv("CSERVE_SHM_COMM_BYTES", "lots")
    with pytest.raises(ValueError, match="CSERVE_SHM_COMM_BYTES"):
        comm.ShmCommunicator(group_name(), 0, 1, 1.0)
    monkeypatch.setenv("CSERVE_SHM_COMM_BYTES", "5000")
    raise_errors(run_threads(2, spin_all_reduce, 10))
