"""The scheduler over a real KV cache manager, driven step by step through SchedulerHarness."""

from __future__ import annotations

from collections import defaultdict

import pytest

from cserve import _core
from cserve._core.testing import SchedulerConfig, SchedulerHarness


def config(**kw) -> SchedulerConfig:
    c = SchedulerConfig()
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def params(max_tokens: int = 4, **kw) -> _core.SamplingParams:
    p = _core.SamplingParams()
    p.max_tokens = max_tokens
    for k, v in kw.items():
        setattr(p, k, v)
    return p


def step(h: SchedulerHarness, token=lambda rid: 5):
    """One schedule + update; every sampling request gets token(internal id). Returns (scheduled, outputs)."""
    sched = h.schedule()
    outs = h.update({rid: token(rid) for rid, _, _, sample, _ in sched if sample})
    return sched, outs


def run(h: SchedulerHarness, max_steps: int = 500, token=lambda rid: 5, check=None):
    """Steps until nothing is left; returns every step's schedule and the outputs per request id/index."""
    steps, outputs = [], defaultdict(list)
    for _ in range(max_steps):
        if not h.has_unfinished():
            break
        sched, outs = step(h, token)
        if check is not None:
            check(sched)
        steps.append(sched)
        for o in outs:
            outputs[(o.request_id, o.index)].append(o)
    assert not h.has_unfinished(), "requests left after max_steps"
    return steps, outputs


def test_token_budget_and_max_num_seqs_respected():
    c = config(max_num_batched_tokens=32, max_num_seqs=4)
    h = SchedulerHarness(c, num_blocks=200, block_size=4)
    lengths = [10, 50, 3, 33, 20, 7, 64, 1]
    for i, n in enumerate(lengths):
        h.add_request(f"r{i}", list(range(100 * i, 100 * i + n)), params(max_tokens=3 + i % 3))
    computed = defaultdict(int)

    def check(sched):
        assert sum(s[2] for s in sched) <= 32
        assert len(sched) <= 4
        assert len({s[0] for s in sched}) == len(sched)
        for rid, start, num, sample, blocks in sched:
            assert num > 0
            # Contiguous: each step starts where the last one ended, and the blocks hold the tokens.
            assert start == computed[rid]
            computed[rid] = start + num
            assert len(blocks) * 4 >= start + num

    steps, outputs = run(h, check=check)
    for i, n in enumerate(lengths):
        toks = [t for o in outputs[(f"r{i}", 0)] for t in o.new_token_ids]
        assert len(toks) == 3 + i % 3
        assert outputs[(f"r{i}", 0)][-1].finish_reason == "length"
        # Prompt plus all generated tokens except the last were computed.
        assert computed[f"r{i}"] == n + len(toks) - 1
    assert h.num_free_blocks == 200 and h.num_running == 0 and h.num_waiting == 0


def test_chunked_prefill_splits_a_long_prompt():
    h = SchedulerHarness(config(max_num_batched_tokens=32), num_blocks=100, block_size=16)
    h.add_request("long", list(range(100)), params(max_tokens=2))
    chunks = []
    for _ in range(4):
        ((rid, start, num, sample, blocks),) = h.schedule()
        chunks.append((start, num, sample))
        h.update({rid: 1} if sample else {})
    assert chunks == [(0, 32, False), (32, 32, False), (64, 32, False), (96, 4, True)]


def test_without_chunked_prefill_a_prompt_waits_for_a_big_enough_budget():
    h = SchedulerHarness(config(max_num_batched_tokens=64, enable_chunked_prefill=False), num_blocks=100,
                         block_size=16)
    h.add_request("a", list(range(40)), params(max_tokens=3))
    h.add_request("b", list(range(100, 140)), params(max_tokens=3))
    sched, _ = step(h)
    assert [(s[0], s[1], s[2]) for s in sched] == [("a", 0, 40)]  # b does not fit whole
    sched, _ = step(h)
    assert sorted((s[0], s[2]) for s in sched) == [("a", 1), ("b", 40)]


def test_long_prefill_token_threshold_caps_each_request():
    c = config(max_num_batched_tokens=64, long_prefill_token_threshold=10)
    h = SchedulerHarness(c, num_blocks=100, block_size=16)
    h.add_request("a", list(range(35)), params(max_tokens=2))
    h.add_request("b", list(range(5)), params(max_tokens=2))

    def check(sched):
        for rid, start, num, sample, blocks in sched:
            assert num <= 10

    steps, outputs = run(h, check=check)
    firsts = [s for st in steps for s in st if s[0] == "a"]
    assert [s[2] for s in firsts[:4]] == [10, 10, 10, 5]


def test_priority_policy_orders_admission():
    h = SchedulerHarness(config(max_num_seqs=1, priority_policy=True), num_blocks=50, block_size=4)
    for rid, prio in [("low", 5), ("high", -1), ("mid", 3), ("mid2", 3)]:
        h.add_request(rid, [1, 2, 3], params(max_tokens=2), prio)
    order = []

    def check(sched):
        for rid, start, *_ in sched:
            if start == 0:
                order.append(rid)

    run(h, check=check)
    assert order == ["high", "mid", "mid2", "low"]


def test_fcfs_admission_ignores_priority():
    h = SchedulerHarness(config(max_num_seqs=1), num_blocks=50, block_size=4)
    for rid, prio in [("a", 5), ("b", -1), ("c", 3)]:
        h.add_request(rid, [1, 2, 3], params(max_tokens=2), prio)
    order = []
    run(h, check=lambda sched: order.extend(s[0] for s in sched if s[1] == 0))
    assert order == ["a", "b", "c"]


def _fill_and_preempt(priority_policy: bool, adds):
    """Two requests of 7 tokens, the second added one step later, in 4 blocks of 4: the first one's
    9th token needs a third block while none is free."""
    h = SchedulerHarness(config(priority_policy=priority_policy), num_blocks=4, block_size=4)
    (rid0, prio0), (rid1, prio1) = adds
    h.add_request(rid0, list(range(0, 7)), params(max_tokens=6), prio0)
    sched, _ = step(h)
    assert [s[0] for s in sched] == [rid0]
    h.add_request(rid1, list(range(10, 17)), params(max_tokens=6), prio1)
    sched, _ = step(h)
    assert [s[0] for s in sched] == [rid0, rid1]
    assert h.num_preemptions == 0 and h.num_free_blocks == 0
    sched, _ = step(h)  # someone is preempted
    assert h.num_preemptions == 1
    assert h.num_running == 1 and h.num_waiting == 1
    return h, sched


def test_priority_preempts_the_lowest_priority_first():
    # "first" is the oldest, and has the highest value (lowest priority): it goes, not the newest.
    h, sched = _fill_and_preempt(True, [("first", 10), ("second", 0)])
    assert [s[0] for s in sched] == ["second"]


def test_fcfs_preempts_the_newest():
    h, sched = _fill_and_preempt(False, [("first", 10), ("second", 0)])
    assert [s[0] for s in sched] == ["first"]


def test_preempted_request_recomputes_and_finishes():
    h, _ = _fill_and_preempt(False, [("first", 0), ("second", 0)])
    tokens = {"first": [], "second": []}
    resumed = []
    for _ in range(50):
        if not h.has_unfinished():
            break
        sched = h.schedule()
        for rid, start, num, sample, blocks in sched:
            if rid == "second" and not resumed:
                resumed.append((start, num, sample))
        outs = h.update({s[0]: 7 for s in sched if s[3]})
        for o in outs:
            tokens[o.request_id].extend(o.new_token_ids)
    # Recomputed: the prompt (7) plus the token it had generated, less whatever full blocks the
    # prefix cache still holds, in one go that samples its next token.
    ((start, num, sample),) = resumed
    assert start % 4 == 0 and start + num == 8 and sample
    # 6 each: "first" had 3 before (the last in the preempting step), "second" 1.
    assert len(tokens["first"]) == 3 and len(tokens["second"]) == 5
    assert h.num_free_blocks == 4 and h.num_preemptions == 1


def test_preempted_request_with_no_blocks_for_itself_waits():
    # One request larger than the cache once it grows: it preempts itself and never loses its tokens.
    h = SchedulerHarness(config(), num_blocks=2, block_size=4)
    h.add_request("a", list(range(6)), params(max_tokens=2))
    h.add_request("b", list(range(6)), params(max_tokens=2))
    steps, outputs = run(h)
    assert len([t for o in outputs[("a", 0)] for t in o.new_token_ids]) == 2
    assert len([t for o in outputs[("b", 0)] for t in o.new_token_ids]) == 2
    assert h.num_free_blocks == 2


def test_abort_frees_blocks():
    h = SchedulerHarness(config(max_num_seqs=1), num_blocks=20, block_size=4)
    h.add_request("run", list(range(10)), params(max_tokens=50))
    h.add_request("wait", list(range(10)), params(max_tokens=50))
    step(h)
    assert h.num_free_blocks == 17 and h.num_running == 1 and h.num_waiting == 1
    outs = h.abort("run")
    assert [(o.request_id, o.finish_reason) for o in outs] == [("run", "abort")]
    assert h.num_free_blocks == 20 and h.num_running == 0
    outs = h.abort("wait")
    assert [(o.request_id, o.finish_reason) for o in outs] == [("wait", "abort")]
    assert not h.has_unfinished() and h.num_waiting == 0
    assert h.abort("unknown") == []
    # The ids are free again.
    h.add_request("run", [1, 2], params(max_tokens=1))
    run(h)


def test_duplicate_request_id_rejected():
    h = SchedulerHarness(config(), num_blocks=20, block_size=4)
    h.add_request("x", [1, 2], params())
    with pytest.raises(ValueError, match="already in use"):
        h.add_request("x", [1, 2], params())


def test_n_forks_share_full_blocks_and_copy_the_partial_one():
    h = SchedulerHarness(config(), num_blocks=20, block_size=4)
    h.add_request("r", list(range(10)), params(max_tokens=3, n=3))
    sched = h.schedule()
    assert [(s[0], s[1], s[2], s[3]) for s in sched] == [("r#0", 0, 10, True)]
    parent_blocks = sched[0][4]
    h.update({"r#0": 1})
    assert h.num_waiting == 0 and h.num_running == 3
    sched = h.schedule()
    by_id = {s[0]: s for s in sched}
    assert set(by_id) == {"r#0", "r#1", "r#2"}
    for sib in ("r#1", "r#2"):
        rid, start, num, sample, blocks = by_id[sib]
        # Each sibling recomputes the last prompt token itself, on shared full blocks.
        assert (start, num, sample) == (9, 1, True)
        assert blocks[:2] == parent_blocks[:2]
        assert blocks[2] != parent_blocks[2]
    copies = h.block_copies()
    assert sorted(copies) == sorted([(parent_blocks[2], by_id["r#1"][4][2]), (parent_blocks[2], by_id["r#2"][4][2])])
    outs = h.update({"r#0": 2, "r#1": 3, "r#2": 4})
    assert sorted((o.request_id, o.index, tuple(o.new_token_ids)) for o in outs) == [
        ("r", 0, (2,)), ("r", 1, (3,)), ("r", 2, (4,))]
    steps, outputs = run(h)
    assert h.num_free_blocks == 20


def test_n_forks_respect_max_num_seqs():
    """A forked request must not push a step over max_num_seqs."""
    h = SchedulerHarness(config(max_num_seqs=2), num_blocks=50, block_size=4)
    h.add_request("r", list(range(10)), params(max_tokens=4, n=4))

    def check(sched):
        assert len(sched) <= 2, f"{len(sched)} requests scheduled with max_num_seqs=2: {[s[0] for s in sched]}"

    steps, outputs = run(h, check=check)
    assert sorted(idx for _, idx in outputs) == [0, 1, 2, 3]


def test_max_model_len_stops_with_length():
    h = SchedulerHarness(config(max_model_len=12), num_blocks=20, block_size=4)
    h.add_request("r", list(range(10)), params(max_tokens=100))
    steps, outputs = run(h)
    toks = [t for o in outputs[("r", 0)] for t in o.new_token_ids]
    assert len(toks) == 2
    assert outputs[("r", 0)][-1].finish_reason == "length"


def test_eos_and_stop_tokens_and_min_tokens():
    h = SchedulerHarness(config(), num_blocks=50, block_size=4, eos_token_ids=[2])
    h.add_request("eos", [5, 6], params(max_tokens=10))
    h.add_request("ignore", [5, 6], params(max_tokens=3, ignore_eos=True))
    h.add_request("min", [5, 6], params(max_tokens=10, min_tokens=3))
    h.add_request("stop", [5, 6], params(max_tokens=10, stop_token_ids=[9]))
    feeds = {"eos": [4, 2], "ignore": [2, 2, 2], "min": [2, 2, 2, 2], "stop": [2 if False else 8, 9]}
    counters = defaultdict(int)

    def token(rid):
        seq = feeds[rid]
        t = seq[min(counters[rid], len(seq) - 1)]
        counters[rid] += 1
        return t

    steps, outputs = run(h, token=token)
    result = {rid: ([t for o in outputs[(rid, 0)] for t in o.new_token_ids], outputs[(rid, 0)][-1])
              for rid in feeds}
    assert result["eos"][0] == [4, 2] and result["eos"][1].finish_reason == "stop"
    assert result["eos"][1].stop_token_id == 2
    assert result["ignore"][0] == [2, 2, 2] and result["ignore"][1].finish_reason == "length"
    # EOS before min_tokens does not stop (the sampler also masks it); the 3rd one does.
    assert result["min"][0] == [2, 2, 2] and result["min"][1].finish_reason == "stop"
    assert result["stop"][0] == [8, 9] and result["stop"][1].finish_reason == "stop"
    assert result["stop"][1].stop_token_id == 9


def test_prefix_cache_through_the_scheduler():
    h = SchedulerHarness(config(), num_blocks=50, block_size=4, enable_prefix_caching=True)
    prompt = list(range(100, 118))  # 18 tokens: 4 full blocks
    h.add_request("a", prompt, params(max_tokens=1))
    run(h)
    assert h.prefix_cache_queries == 18 and h.prefix_cache_hits == 0
    h.add_request("b", prompt, params(max_tokens=1))
    sched = h.schedule()
    ((rid, start, num, sample, blocks),) = sched
    assert (rid, start, num) == ("b", 16, 2)
    assert h.prefix_cache_queries == 36 and h.prefix_cache_hits == 16
    h.update({"b": 1})
    # An exact multiple of the block size still recomputes the last token.
    h.add_request("c", prompt[:16], params(max_tokens=1))
    ((rid, start, num, sample, blocks),) = h.schedule()
    assert (start, num) == (12, 4)
    h.update({"c": 1})
    # Prompt logprobs need every position: no cache.
    h.add_request("d", prompt, params(max_tokens=1, prompt_logprobs=0))
    ((rid, start, num, sample, blocks),) = h.schedule()
    assert (start, num) == (0, 18)
    h.update({"d": 1})


def test_prefix_caching_disabled():
    h = SchedulerHarness(config(), num_blocks=50, block_size=4, enable_prefix_caching=False)
    for rid in ("a", "b"):
        h.add_request(rid, list(range(18)), params(max_tokens=1))
        ((_, start, num, _, _),) = h.schedule()
        assert (start, num) == (0, 18)
        h.update({rid: 1})
    assert h.prefix_cache_hits == 0


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_prefix_cache_every_hash_algo(algo):
    h = SchedulerHarness(config(), num_blocks=50, block_size=4, hash_algo=algo)
    for rid in ("a", "b"):
        h.add_request(rid, list(range(9)), params(max_tokens=1))
        sched = h.schedule()
        h.update({rid: 1})
    assert sched[0][1] == 8 and h.prefix_cache_hits == 8


def test_cached_blocks_survive_until_reused():
    """A finished request's cached blocks are evicted only when the pool reuses them (LRU)."""
    h = SchedulerHarness(config(), num_blocks=6, block_size=4)
    h.add_request("a", list(range(12)), params(max_tokens=1))  # 3 full blocks + 1
    run(h)
    h.add_request("filler", list(range(50, 55)), params(max_tokens=1))  # takes 2 free blocks
    run(h)
    h.add_request("again", list(range(12)), params(max_tokens=1))
    ((_, start, _, _, _),) = h.schedule()
    assert start == 8  # blocks 0 and 1 of "a" still cached (the last of the 3 full ones is recomputed)
    h.update({"again": 1})


STALE_BLOCK_REASON = (
    "engine bug: with the priority policy, a request already scheduled in this step can be preempted by a later "
    "one; allocate_slots had registered the blocks its (now cancelled) chunk would fill in the prefix cache, and "
    "preempt() frees them with their hashes, so the request (or any request with that prefix) later 'hits' blocks "
    "whose KV was never computed")


def test_preempting_a_scheduled_request_does_not_cache_uncomputed_blocks():
    # A (low priority) prefills 24 tokens in chunks of 8; B (high priority) arrives after A's first chunk.
    # In step 3 A is given tokens 16..23 (two new blocks, registered as cached), then B needs a block: A is
    # preempted and its chunk cancelled. Tokens 16..23 of A were never computed.
    c = config(max_num_batched_tokens=16, long_prefill_token_threshold=8, priority_policy=True)
    h = SchedulerHarness(c, num_blocks=7, block_size=4)
    h.add_request("A", list(range(100, 124)), params(max_tokens=3, ignore_eos=True), 10)
    starts = []
    for i in range(10):
        if i == 1:
            h.add_request("B", [1, 2, 3, 4], params(max_tokens=2, ignore_eos=True), 0)
        sched = h.schedule()
        starts += [(i, s[1]) for s in sched if s[0] == "A"]
        h.update({s[0]: 7 for s in sched if s[3]})
    assert h.num_preemptions == 1
    # A was computed up to 16 before it was preempted: resuming later than 16 reuses uncomputed KV.
    resumed = [start for i, start in starts if i >= 2]
    assert resumed and resumed[0] <= 16, f"A resumed at token {resumed[0]}"


@pytest.mark.parametrize("priority_policy", [False, True], ids=["fcfs", "priority"])
@pytest.mark.parametrize("seed", range(12))
def test_random_workloads_keep_the_invariants(seed, priority_policy):
    """Random prompts, priorities, n and arrival times on a tight cache: every step respects the
    budgets, every request ends with its max_tokens (or length when it cannot fit), no block leaks."""
    import random

    rng = random.Random(seed)
    block_size, num_blocks = 4, rng.randrange(6, 20)
    c = config(max_num_seqs=rng.randrange(1, 6), max_num_batched_tokens=rng.randrange(4, 40),
               max_model_len=200, priority_policy=priority_policy,
               long_prefill_token_threshold=rng.choice([0, 4, 9]))
    h = SchedulerHarness(c, num_blocks, block_size, enable_prefix_caching=rng.random() < 0.7)
    want = {}
    pending = []
    for i in range(rng.randrange(3, 9)):
        prompt = [rng.randrange(1, 50) for _ in range(rng.randrange(1, 3 * block_size * 2))]
        n = rng.choice([1, 1, 2, 3])
        max_tokens = rng.randrange(1, 12)
        pending.append((rng.randrange(0, 6), f"r{i}", prompt, params(max_tokens, n=n), rng.randrange(-2, 3)))
        want[f"r{i}"] = (n, max_tokens)
    pending.sort(key=lambda x: x[0])
    finished = {}
    for step_no in range(2000):
        while pending and pending[0][0] <= step_no:
            _, rid, prompt, p, prio = pending.pop(0)
            h.add_request(rid, prompt, p, prio)
        if not pending and not h.has_unfinished():
            break
        sched, outs = step(h)
        assert sum(num for _, _, num, _, _ in sched) <= c.max_num_batched_tokens
        assert len(sched) <= c.max_num_seqs
        assert len({rid for rid, *_ in sched}) == len(sched)
        for o in outs:
            if o.finished:
                finished[(o.request_id, o.index)] = o.finish_reason
    assert not pending and not h.has_unfinished()
    for rid, (n, max_tokens) in want.items():
        for i in range(n):
            assert finished[(rid, i)] == "length"
    assert h.num_free_blocks == num_blocks


def test_prompt_logprob_rows_per_step_are_capped():
    # Each prompt token of a prompt-logprobs request needs a vocabulary-wide logits row: at most
    # 512 of them per step, whatever the token budget; other requests use the rest of the budget.
    h = SchedulerHarness(config(max_num_batched_tokens=4096, max_model_len=4096), 512, 16, False, "sha256", [])
    h.add_request("lp", list(range(3, 1503)), params(max_tokens=1, prompt_logprobs=1))
    h.add_request("plain", list(range(3, 1003)), params(max_tokens=1))
    sched, _ = step(h)
    assert {s[0]: s[2] for s in sched} == {"lp": 512, "plain": 1000}
    steps, outputs = run(h)
    assert [sum(s[2] for s in sched if s[0] == "lp") for sched in steps][:2] == [512, 476]
    assert outputs[("lp", 0)][-1].finish_reason == "length"


# --- speculative decoding ------------------------------------------------------------------------

def test_drafts_are_budgeted_and_rejected_slots_released():
    h = SchedulerHarness(config(max_num_batched_tokens=64), num_blocks=20, block_size=4, enable_prefix_caching=False)
    h.add_request("r", list(range(10, 20)), params(max_tokens=20))
    assert h.schedule() == [("r", 0, 10, True, [0, 1, 2])]
    h.update_speculative({"r": [5]}, {"r": [1, 2, 3, 4]})
    # The last token and four drafts: 15 tokens in all, four blocks.
    ((rid, start, num_new, sample, blocks),) = h.schedule()
    assert (start, num_new, sample, len(blocks)) == (10, 5, True, 4)
    assert h.scheduled_drafts() == {"r": [1, 2, 3, 4]}
    free_before = h.num_free_blocks
    # One draft accepted, then the target's own token: 12 tokens computed, the fourth block is free again.
    outs = h.update_speculative({"r": [1, 9]}, {"r": []})
    assert list(outs[0].new_token_ids) == [1, 9]
    assert h.num_free_blocks == free_before + 1
    assert h.spec_counters == (1, 4, 1, [1, 0, 0, 0])
    # Next step computes from the first rejected position: the token after the accepted one.
    assert h.schedule()[0][1:3] == (12, 1)


def test_drafts_are_cut_by_max_tokens_and_budget():
    h = SchedulerHarness(config(max_num_batched_tokens=6), num_blocks=40, block_size=4)
    h.add_request("a", [1, 2, 3], params(max_tokens=3))
    h.add_request("b", [4, 5, 6], params(max_tokens=30))
    h.schedule()
    h.update_speculative({"a": [7], "b": [8]}, {"a": [1, 2, 3, 4], "b": [1, 2, 3, 4, 5, 6]})
    # a may output two more tokens: one draft; b gets what the budget of 6 leaves.
    assert [(s[0], s[2]) for s in h.schedule()] == [("a", 2), ("b", 4)]
    assert h.scheduled_drafts() == {"a": [1], "b": [1, 2, 3]}
    outs = {o.request_id: o for o in h.update_speculative({"a": [1, 5], "b": [1, 2, 3, 6]}, {})}
    assert list(outs["a"].new_token_ids) == [1, 5] and outs["a"].finish_reason == "length"
    assert list(outs["b"].new_token_ids) == [1, 2, 3, 6]


def test_stop_token_inside_accepted_drafts_drops_the_rest():
    h = SchedulerHarness(config(), num_blocks=40, block_size=4, eos_token_ids=[2])
    h.add_request("r", [10, 11, 12], params(max_tokens=30))
    h.schedule()
    h.update_speculative({"r": [20]}, {"r": [21, 2, 23]})
    h.schedule()
    (out,) = h.update_speculative({"r": [21, 2, 23, 24]}, {})
    assert list(out.new_token_ids) == [21, 2] and out.stop_token_id == 2
    assert h.num_free_blocks == 40 and not h.has_unfinished()
