"""BlockPool: reference counts, the LRU free queue and the prefix-cache map."""

from __future__ import annotations

import pytest

from cserve._core.testing import BlockPool

H1, H2, H3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def test_allocate_in_order_and_refcounts():
    pool = BlockPool(4)
    assert pool.num_free_blocks == 4 and pool.usage == 0.0
    ids = pool.allocate(3)
    assert ids == [0, 1, 2]
    assert [pool.ref_count(i) for i in range(4)] == [1, 1, 1, 0]
    assert pool.num_free_blocks == 1 and pool.usage == pytest.approx(0.75)
    pool.touch([1])
    assert pool.ref_count(1) == 2
    pool.release([1])
    assert pool.ref_count(1) == 1 and pool.num_free_blocks == 1
    pool.release([0, 1, 2])
    assert pool.num_free_blocks == 4 and pool.usage == 0.0


def test_allocate_more_than_free_raises():
    pool = BlockPool(2)
    pool.allocate(1)
    with pytest.raises(MemoryError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1  # nothing half-taken


def test_release_twice_is_an_error_not_a_crash():
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.release([b])
    with pytest.raises(RuntimeError, match="released twice"):
        pool.release([b])


def test_zero_blocks_rejected():
    with pytest.raises(ValueError):
        BlockPool(0)


def test_freed_blocks_are_reused_oldest_first():
    pool = BlockPool(5)
    ids = pool.allocate(5)
    assert ids == [0, 1, 2, 3, 4]
    pool.release([3])
    pool.release([1, 4])
    pool.release([0])
    # The free queue is 3, 1, 4, 0 (release order): allocation takes from its head.
    assert pool.allocate(2) == [3, 1]
    pool.release([2])
    assert pool.allocate(3) == [4, 0, 2]


def test_cached_free_block_stays_findable_until_reused():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.set_cached(a, H1)
    pool.set_cached(b, H2)
    assert pool.lookup(H1) == a and pool.lookup(H2) == b and pool.lookup(H3) == -1
    pool.release([a])
    pool.release([b])
    # Free but cached: still found.
    assert pool.lookup(H1) == a and pool.lookup(H2) == b
    # A hit takes the block back out of the free queue with a reference.
    pool.touch([b])
    assert pool.ref_count(b) == 1 and pool.num_free_blocks == 1
    # Reusing `a` (the head of the queue) evicts its hash.
    assert pool.allocate(1) == [a]
    assert pool.lookup(H1) == -1
    assert pool.lookup(H2) == b


def test_eviction_follows_lru_order():
    pool = BlockPool(4)
    ids = pool.allocate(4)
    hashes = [bytes([i]) * 8 for i in range(4)]
    for i, h in zip(ids, hashes):
        pool.set_cached(i, h)
    # Released tail-first, the way a request frees its blocks: the last block is evicted first.
    pool.release(list(reversed(ids)))
    (first,) = pool.allocate(1)
    assert first == ids[3]
    assert pool.lookup(hashes[3]) == -1
    assert [pool.lookup(h) for h in hashes[:3]] == ids[:3]
    (second,) = pool.allocate(1)
    assert second == ids[2] and pool.lookup(hashes[2]) == -1


def test_set_cached_keeps_the_first_block_for_a_hash():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.set_cached(a, H1)
    pool.set_cached(b, H1)  # duplicate content: the map keeps a
    assert pool.lookup(H1) == a
    pool.release([b])
    pool.allocate(1)  # reuses b; must not drop a's entry
    assert pool.lookup(H1) == a


def test_reset_prefix_cache():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    pool.set_cached(a, H1)
    pool.release([a])
    assert pool.reset_prefix_cache() is False  # b is in use
    assert pool.lookup(H1) == a
    pool.release([b])
    assert pool.reset_prefix_cache() is True
    assert pool.lookup(H1) == -1
    assert pool.num_free_blocks == 2
