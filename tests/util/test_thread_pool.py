"""ThreadPool.parallel_walk: every item once, and each thread's chunks next to each other."""

import itertools

import pytest
from cserve._core import testing as T


@pytest.mark.parametrize("threads", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n,grain", [(1, 1), (2, 1), (9, 1), (24, 1), (24, 4), (100, 3), (768, 1), (7, 8)])
def test_parallel_walk_covers_each_item_once_in_adjacent_chunks(n, grain, threads):
    for _ in range(20):  # the split between a pair's threads changes from run to run
        chunks = T.parallel_walk(n, grain, threads)
        seen = sorted((b, e) for _, b, e, _ in chunks)
        assert seen[0][0] == 0 and seen[-1][1] == n
        assert all(prev[1] == cur[0] for prev, cur in itertools.pairwise(seen)), seen
        by_thread = {}
        for t, b, e, down in chunks:
            assert b < e
            by_thread.setdefault(t, []).append((b, e, down))
        assert len(by_thread) <= threads
        for runs in by_thread.values():
            assert len({down for _, _, down in runs}) == 1  # one direction per thread
            for (b0, e0, down), (b1, e1, _) in itertools.pairwise(runs):
                assert (b1 == e0) if not down else (e1 == b0), runs


def test_parallel_walk_pairs_meet_in_their_share():
    # Two threads: one walks up from 0, the other down from the end, and they meet.
    for _ in range(20):
        chunks = T.parallel_walk(64, 1, 2)
        ups = [(b, e) for _, b, e, down in chunks if not down]
        downs = [(b, e) for _, b, e, down in chunks if down]
        if ups:
            assert ups[0][0] == 0
        if downs:
            assert downs[0][1] == 64
        if ups and downs:
            assert ups[-1][1] == downs[-1][0]


def test_parallel_walk_small_work_runs_on_the_caller():
    assert T.parallel_walk(3, 4, 2) == [(0, 0, 3, False)]
    assert T.parallel_walk(0, 1, 2) == []
