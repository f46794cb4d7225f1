"""The gloo communicator (cpp/comm/gloo_communicator.cpp, gloo's TCP transport) through
cserve._core.comm, on 127.0.0.1.

Ranks run as processes and as threads of this one. all_reduce must return, on every rank and bit
for bit, a float32 sum of the ranks' values in some order (gloo's ring sums each element in an
order of its own; with 2 or 3 ranks that leaves the sums test_shm_communicator's expected_sum
gives for the rotations of the inputs), rounded to the dtype, and stay within the dtype's
rounding of the float64 sum. A peer that is killed, exits, aborts, hangs or never comes makes the
others raise TimeoutError within the timeout, never a hang.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cserve._core import comm

from tests.comm.test_shm_communicator import (
    DTYPES,
    HALF_ULP,
    SUBNORMAL_STEP,
    Inputs,
    broadcast_checks,
    call_dtype,
    expected_sum,
    gather_checks,
    spin_all_reduce,
    to_f32,
)

SIZES = (1, 2, 3, 17, 100, 1001, 4099, 65537, 262_147, 1_048_583)  # up to 4 MB of float32
SMALL_ITERATIONS = 300


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


# --- checks ----------------------------------------------------------------------------------


def check_all_reduce(c, got: np.ndarray, inputs: list[np.ndarray], dtype: str, what: str) -> None:
    n = len(inputs)
    bits = np.uint32 if dtype == "float32" else np.uint16
    # Every rank holds the same bits.
    everyone = np.empty(n * got.size, got.dtype)
    c.all_gather(got, everyone, call_dtype(dtype))
    assert (everyone.view(bits).reshape(n, -1) == got.view(bits)).all(), f"{what}: ranks disagree"
    # A float32 sum in some order: with 2 or 3 terms, the sum of one of the rotations.
    nan = np.isnan(to_f32(got, dtype))
    ok = np.zeros(got.size, bool)
    for k in range(n):
        want = expected_sum(inputs[k:] + inputs[:k], dtype)
        ok |= (got.view(bits) == want.view(bits)) | (nan & np.isnan(to_f32(want, dtype)))
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise AssertionError(f"{what}: element {i} of {got.size} is {to_f32(got, dtype)[i]!r}, no float32 sum of "
                             f"{[to_f32(x, dtype)[i] for x in inputs]}")
    # And near the float64 sum.
    xs = np.stack([to_f32(x, dtype).astype(np.float64) for x in inputs])
    ref, magnitude = xs.sum(axis=0), np.abs(xs).sum(axis=0)
    value = to_f32(got, dtype).astype(np.float64)
    finite = np.isfinite(ref) & np.isfinite(value)
    bound = HALF_ULP[dtype] * np.abs(ref) + n * 2.0**-24 * magnitude + SUBNORMAL_STEP[dtype]
    assert (np.abs(value - ref)[finite] <= 1.01 * bound[finite]).all(), f"{what}: off the float64 sum"


def battery(c, seed: int) -> None:
    """all_reduce in every dtype and size, hundreds of small ones, all_gather, broadcast from
    every root (timed and untimed), then all of them and barriers in a random mix (consecutive
    operations of different kinds)."""
    r, n = c.rank, c.size
    inputs = Inputs(seed, n, max(SIZES) + 4096)

    def reduce_checked(xs: list, dtype: str, what: str, check: bool = True) -> None:
        got = xs[r].copy()
        c.all_reduce(got, call_dtype(dtype))
        if check:
            check_all_reduce(c, got, xs, dtype, f"rank {r}/{n} all_reduce {dtype} n={got.size} {what}")

    def gather_checked(xs: list, dtype: str, what: str) -> None:
        out = np.empty(n * xs[0].size, dtype=xs[0].dtype)
        c.all_gather(xs[r], out, call_dtype(dtype))
        np.testing.assert_array_equal(out.view(np.uint8), np.concatenate(xs).view(np.uint8), what)

    def broadcast_checked(xs: list, dtype: str, what: str, root: int = 0, untimed: bool = False) -> None:
        data = xs[root].copy() if r == root else np.zeros_like(xs[root])
        c.broadcast(data, root, untimed=untimed)
        np.testing.assert_array_equal(data.view(np.uint8), xs[root].view(np.uint8), what)

    for i, count in enumerate(SIZES):
        for dtype in DTYPES:
            reduce_checked(inputs.get(count, 7919 * i, dtype), dtype, "")
    for it in range(SMALL_ITERATIONS):
        count, dtype = 1 + (it * 37) % 257, DTYPES[it % 3]
        reduce_checked(inputs.get(count, 104729 * it, dtype), dtype, f"iteration {it}", check=it % 10 == 0)
    gather_checks(c, inputs)
    broadcast_checks(c, seed)
    for i, count in enumerate((1, 4097, 750_001)):
        for root in range(n):
            broadcast_checked(inputs.get(count, 17 * i, "float32"), "float32", f"broadcast {i}", root, bool(i % 2))
    kinds = (reduce_checked, gather_checked, lambda xs, dtype, what: broadcast_checked(xs, dtype, what, it % n),
             lambda *_: c.barrier())
    for it, kind in enumerate(np.random.default_rng([seed, 7]).integers(0, len(kinds), 200)):
        count, dtype = 1 + (it * 53) % 2000, DTYPES[it % 3]
        kinds[kind](inputs.get(count, 613 * it, dtype), dtype, f"mixed {it}")


def idle_then_exit(c, seconds: float) -> None:
    """Rank 0 of test_untimed_broadcast_ends_when_the_root_exits: never broadcasts."""
    time.sleep(seconds)
    os._exit(0)


JOBS = {"battery": battery, "spin_all_reduce": spin_all_reduce, "idle_then_exit": idle_then_exit}


# --- running ranks ---------------------------------------------------------------------------


TIMED_OUT = 3  # a rank process's exit status when its job raised TimeoutError


def _rank_process(address: str, group: str, rank: int, size: int, timeout: float, job: str, args: tuple) -> None:
    """A rank as a process: exit status 0 when its job is done, TIMED_OUT when the group failed,
    1 (with the traceback on stderr) for any other error."""
    try:
        JOBS[job](comm.GlooCommunicator(address, group, rank, size, timeout), *args)
    except TimeoutError:
        traceback.print_exc()
        sys.exit(TIMED_OUT)


def start_processes(address: str, group: str, ranks, size: int, job: str, args: tuple,
                    timeout: float = 30.0) -> dict:
    ctx = multiprocessing.get_context("spawn")
    procs = {r: ctx.Process(target=_rank_process, args=(address, group, r, size, timeout, job, args)) for r in ranks}
    for p in procs.values():
        p.start()
    return procs


def exit_codes(procs: dict, wait: float = 60.0) -> dict:
    """Each process's exit status once it has ended (killed after `wait` s: the test fails)."""
    deadline = time.monotonic() + wait
    for p in procs.values():
        p.join(timeout=max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
            raise AssertionError(f"rank process {p.pid} hangs")
    return {r: p.exitcode for r, p in procs.items()}


def in_threads(size: int, job, timeout: float = 30.0) -> list:
    """job(communicator) on `size` ranks as threads of this process; their results (a rank's
    exception is raised here; one that hangs fails the test after a minute)."""
    address, group = free_address(), prefix()
    pool = ThreadPoolExecutor(size)
    try:
        futures = [pool.submit(lambda r: job(comm.GlooCommunicator(address, group, r, size, timeout)), r)
                   for r in range(size)]
        return [f.result(timeout=60) for f in futures]
    finally:
        pool.shutdown(wait=False)


# --- correctness -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_as_processes(size):
    procs = start_processes(free_address(), prefix(), range(size), size, "battery", (1000 + size,))
    assert exit_codes(procs) == {r: 0 for r in range(size)}  # tracebacks on stderr


def test_two_ranks_sum_as_the_shm_communicator_does():
    # a + b == b + a: with two ranks the result is the rank-order float32 sum, bit for bit.
    def job(c):
        for dtype in DTYPES:
            xs = Inputs(5, 2, 70_000).get(65_537, 11, dtype)
            got = xs[c.rank].copy()
            c.all_reduce(got, call_dtype(dtype))
            bits = np.uint32 if dtype == "float32" else np.uint16
            np.testing.assert_array_equal(got.view(bits), expected_sum(xs, dtype).view(bits))

    in_threads(2, job)


def test_groups_share_one_store():
    # Two groups meet through one store with their own prefixes: the first's rank 0 serves it,
    # the second's rank 0 (in the same process) uses it (host_store=False), as the engine's
    # -tp and -pp subgroups use its world group's.
    address = free_address()

    def rank_main(group, r, host_store):
        c = comm.GlooCommunicator(address, group, r, 2, 20.0, host_store)
        x = np.full(10, r + 1, np.float32)
        c.all_reduce(x)
        c.barrier()
        return x, c  # kept until the test ends: the first group's rank 0 serves the store

    pool = ThreadPoolExecutor(4)
    try:
        server = pool.submit(rank_main, "world", 0, True)
        time.sleep(0.2)  # serving before the second group's rank 0 looks for the store
        others = [pool.submit(rank_main, *args) for args in (("world", 1, True), ("sub", 0, False), ("sub", 1, True))]
        assert all((f.result(timeout=30)[0] == 3).all() for f in [server, *others])
    finally:
        pool.shutdown(wait=False)


# --- failures --------------------------------------------------------------------------------


def test_a_killed_rank_process_fails_the_others():
    # Rank 0 (a thread here) and ranks 1, 2 (processes) all-reduce until rank 2 is killed.
    address, group, size, timeout = free_address(), prefix(), 3, 20.0
    procs = start_processes(address, group, (1, 2), size, "spin_all_reduce", (10**9,), timeout=timeout)
    c = comm.GlooCommunicator(address, group, 0, size, timeout)
    failed: list = []

    def rank_zero() -> None:
        try:
            spin_all_reduce(c, 10**9)
        except TimeoutError as e:
            failed.append((e, time.monotonic()))

    spinning = threading.Thread(target=rank_zero)
    spinning.start()
    time.sleep(0.3)
    killed_at = time.monotonic()
    os.kill(procs[2].pid, signal.SIGKILL)
    spinning.join(timeout=timeout)
    assert not spinning.is_alive() and len(failed) == 1
    error, at = failed[0]
    assert "all_reduce" in str(error) and "rank 2" in str(error), error
    assert at - killed_at < timeout / 2  # noticed as an exit, not by waiting out the timeout
    assert exit_codes(procs) == {1: TIMED_OUT, 2: -signal.SIGKILL}
    with pytest.raises(TimeoutError, match="failed earlier"):
        c.barrier()


def test_untimed_broadcast_ends_when_the_root_exits():
    # Rank 1 waits for rank 0's broadcast without a deadline (longer than its 1 s timeout);
    # rank 0 exits instead after 3 s.
    address, group = free_address(), prefix()
    procs = start_processes(address, group, (0,), 2, "idle_then_exit", (3.0,), timeout=1.0)
    c = comm.GlooCommunicator(address, group, 1, 2, 30.0)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="broadcast.*rank 0"):
        c.broadcast(np.zeros(100, np.uint8), 0, untimed=True)
    assert 1.5 < time.monotonic() - start < 15.0
    assert exit_codes(procs) == {0: 0}


def test_abort_from_another_thread():
    address, group = free_address(), prefix()
    comms, errors, waited = {}, {}, {}

    def rank_main(r):
        try:
            comms[r] = c = comm.GlooCommunicator(address, group, r, 2, 60.0)
            start = time.monotonic()
            try:
                if r == 0:
                    c.broadcast(np.zeros(10, np.uint8), 1, untimed=True)  # rank 1 never sends
                else:
                    c.barrier()  # rank 0 never comes
            finally:
                waited[r] = time.monotonic() - start
        except BaseException as e:  # noqa: BLE001
            errors[r] = e

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in (0, 1)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(comms) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    comms[0].abort("the engine died")
    for t in threads:
        t.join(timeout=20)
    assert not any(t.is_alive() for t in threads), "abort left a collective blocked"
    assert isinstance(errors[0], TimeoutError) and "the engine died" in str(errors[0]), errors[0]
    assert isinstance(errors[1], TimeoutError) and "rank 0" in str(errors[1]), errors[1]
    assert waited[0] < 10 and waited[1] < 10
    for c in comms.values():
        with pytest.raises(TimeoutError):
            c.all_reduce(np.ones(3, np.float32))


def test_a_rank_that_never_joins_fails_the_group():
    timeout = 1.0
    start = time.monotonic()
    address, group = free_address(), prefix()
    errors = [None, None]

    def rank_main(r):
        try:
            comm.GlooCommunicator(address, group, r, 3, timeout)
        except BaseException as e:  # noqa: BLE001
            errors[r] = e

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for e in errors:
        assert isinstance(e, TimeoutError) and "rank 2 did not join" in str(e), e
    assert time.monotonic() - start < timeout + 3.0


def test_rank_zero_that_never_comes():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="could not reach the gloo store"):
        comm.GlooCommunicator(free_address(), prefix(), 1, 2, 0.5)
    assert time.monotonic() - start < 3.0


def test_a_rank_that_stops_arriving_times_out():
    # Rank 1 joins, then never calls again (alive, but gone from the group's point of view).
    timeout, address, group = 1.5, free_address(), prefix()
    joined: list = []
    peer = threading.Thread(target=lambda: joined.append(comm.GlooCommunicator(address, group, 1, 2, timeout)))
    peer.start()
    c = comm.GlooCommunicator(address, group, 0, 2, timeout)
    peer.join(timeout=30)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"all_reduce: a peer did not arrive within 1\.5 s"):
        c.all_reduce(np.ones(4096, np.float32))
    assert timeout - 0.1 < time.monotonic() - start < timeout + 1.5
    with pytest.raises(TimeoutError, match="barrier"):  # rank 0 closed its connections on the way out
        joined[0].barrier()


def test_bad_arguments():
    with pytest.raises(ValueError, match="host:port"):
        comm.GlooCommunicator("localhost", prefix(), 0, 1, 1.0)
    with pytest.raises(ValueError, match="host:port"):
        comm.GlooCommunicator("127.0.0.1:99999", prefix(), 0, 1, 1.0)
    with pytest.raises(ValueError, match="rank 2 of 2"):
        comm.GlooCommunicator(free_address(), prefix(), 2, 2, 1.0)
    address = free_address()
    c = comm.GlooCommunicator(address, prefix(), 0, 1, 5.0)  # one rank: the identity
    x = np.random.default_rng(0).standard_normal(100_001).astype(np.float32)
    got, out = x.copy(), np.empty_like(x)
    c.all_reduce(got)
    c.all_gather(x, out)
    c.broadcast(got, 0)
    assert (got == x).all() and (out == x).all()
    with pytest.raises(ValueError, match="cannot serve"):  # this process serves that port already
        comm.GlooCommunicator(address, prefix(), 0, 1, 1.0)
    # (The binding's own checks, shared with the shm communicator, are tested there.)
    for bad_call, match in ((lambda: c.broadcast(np.ones(4, np.uint8), 1), "root 1 is not a rank"),
                            (lambda: c.all_reduce(np.ones(4, np.float64)), "float32")):
        with pytest.raises(ValueError, match=match):
            bad_call()
    c.barrier()  # still usable
