"""GPU sampling against NumPy: greedy and raw logprobs exactly, sampled tokens by their
distribution (temperature, top-k, top-p, min-p) over many seeds, and determinism per seed."""

from __future__ import annotations

import numpy as np
import pytest

cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")
if cuda.device_count() == 0:
    pytest.skip("no CUDA device here", allow_module_level=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def params(rows, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=0):
    return [(temperature, top_k, top_p, min_p, seed, i) for i in range(rows)]


@pytest.mark.parametrize("vocab", [7, 1000, 128256])
def test_greedy_and_logprobs(vocab):
    rng = np.random.default_rng(vocab)
    logits = (rng.standard_normal((9, vocab)) * 3).astype(np.float32)
    ids, lps, top_ids, top_lps, ranks = cuda.sample(logits, params(9, temperature=0.0), 5 if vocab >= 5 else vocab)
    ref = log_softmax(logits)
    assert list(ids) == list(logits.argmax(axis=1))
    assert list(ranks) == [1] * 9
    np.testing.assert_allclose(lps, ref[np.arange(9), ids], atol=1e-4)
    n = top_lps.shape[1]
    want = np.argsort(-logits, axis=1, kind="stable")[:, :n]
    assert np.array_equal(np.array(top_ids).reshape(9, n), want)
    np.testing.assert_allclose(top_lps, np.take_along_axis(ref, want, axis=1), atol=1e-4)


def empirical(logits_row, rows, **kw):
    logits = np.repeat(logits_row[None, :], rows, axis=0).astype(np.float32)
    ids, _, _, _, _ = cuda.sample(logits, params(rows, **kw), 0)
    return np.bincount(ids, minlength=logits_row.size) / rows


LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])


@pytest.mark.parametrize("kw, keep", [
    (dict(temperature=1.0), 8),
    (dict(temperature=0.5), 8),
    (dict(temperature=1.0, top_k=3), 3),
    (dict(temperature=1.0, top_p=0.6), None),
    (dict(temperature=1.0, min_p=0.2), None),
])
def test_sampled_distribution(kw, keep):
    t = kw.get("temperature", 1.0)
    p = np.exp(LOGITS / t - (LOGITS / t).max())
    p /= p.sum()
    order = np.argsort(-p)
    mask = np.zeros(8, bool)
    if keep is not None:
        mask[order[:keep]] = True
    elif "top_p" in kw:  # the smallest prefix holding top_p
        mask[order[: int(np.searchsorted(np.cumsum(p[order]), kw["top_p"]) + 1)]] = True
    else:
        mask = p >= kw["min_p"] * p.max()
    want = np.where(mask, p, 0)
    want /= want.sum()
    got = empirical(LOGITS, 40000, **kw)
    assert np.all(got[~mask] == 0)
    np.testing.assert_allclose(got, want, atol=0.01)


def test_same_seed_same_token():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((64, 50000)).astype(np.float32)
    a, _, _, _, _ = cuda.sample(logits, params(64, seed=11), 0)
    b, _, _, _, _ = cuda.sample(logits, params(64, seed=11), 0)
    c, _, _, _, _ = cuda.sample(logits, params(64, seed=12), 0)
    assert list(a) == list(b) and list(a) != list(c)


def test_ranks_of_sampled_tokens():
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal((64, 500)) * 2).astype(np.float32)
    ids, _, _, _, ranks = cuda.sample(logits, params(64, temperature=1.5, seed=3), 0)
    want = [1 + int((logits[r] > logits[r, ids[r]]).sum()) for r in range(64)]
    assert list(ranks) == want


def test_logits_processors_and_penalties():
    """allowed ids, bias (duplicates add up), masks, repetition, frequency and presence, in the
    CPU sampler's order, against NumPy."""
    rng = np.random.default_rng(8)
    vocab = 1000
    logits = (rng.standard_normal((4, vocab)) * 3).astype(np.float32)
    rows = [
        ([5, 9, 700], [(9, 2.5), (9, 1.0)], [], [], [], 1.0, 0.0, 0.0),
        ([], [(3, -4.0)], [3, 4], [1, 2, 10, 11], [], 1.3, 0.0, 0.0),
        ([], [], [], [], [(7, 3.0), (8, 1.0)], 1.0, 0.5, 0.25),
        ([], [], [], [], [], 1.0, 0.0, 0.0),
    ]
    want = logits.astype(np.float64).copy()
    keep = want[0, [5, 9, 700]].copy()
    want[0, :] = -np.inf
    want[0, [5, 9, 700]] = keep
    want[0, 9] += 3.5
    want[1, 3] += -4.0
    want[1, [3, 4]] = -np.inf
    for t in [1, 2, 10, 11]:
        want[1, t] = want[1, t] / 1.3 if want[1, t] > 0 else want[1, t] * 1.3
    want[2, 7] -= 0.5 * 3 + 0.25
    want[2, 8] -= 0.5 * 1 + 0.25
    got = cuda.process_logits(logits, rows)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-6)


def _kept_mask(p, top_k=0, top_p=1.0, min_p=0.0):
    """vLLM's order: min_p and top_k (floors on the probabilities), then top_p of what is left."""
    mask = p > 0
    if min_p > 0:
        mask &= p >= min_p * p.max()
    if top_k > 0:
        mask &= p >= np.sort(p[mask])[::-1][min(top_k, mask.sum()) - 1]
    if top_p < 1.0:
        kept = np.where(mask, p, 0)
        order = np.argsort(-kept, kind="stable")
        n = int(np.searchsorted(np.cumsum(kept[order]), top_p * kept.sum()) + 1)
        mask = np.zeros_like(mask)
        mask[order[:n]] = True
    return mask


@pytest.mark.parametrize("kw", [dict(top_k=3), dict(top_p=0.5), dict(top_k=4, top_p=0.7)])
def test_masked_logits_leave_top_k_and_top_p_filtering_on(kw):
    # Masked (-inf) logits, as allowed_token_ids and min_tokens leave them, must not turn the
    # thresholds off: only the kept tokens of the finite ones are ever drawn.
    row = np.full(64, -np.inf)
    row[[3, 9, 17, 30, 41, 50, 63]] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0]
    p = np.where(np.isfinite(row), np.exp(row - 2.0), 0.0)
    mask = _kept_mask(p / p.sum(), **kw)
    assert mask.sum() < 7  # the filter removes some finite tokens
    got = empirical(row, 40000, **kw)
    assert np.all(got[~mask] == 0), np.nonzero(got[~mask])
    want = np.where(mask, p, 0) / np.where(mask, p, 0).sum()
    np.testing.assert_allclose(got, want, atol=0.01)


def test_min_p_applies_before_top_p():
    # min_p first leaves less mass, so top_p keeps fewer tokens than in the other order.
    p = np.exp(LOGITS - LOGITS.max())
    p /= p.sum()
    kw = dict(top_p=0.8, min_p=0.2)
    mask = _kept_mask(p, **kw)
    other = _kept_mask(p, top_p=0.8) & (p >= 0.2 * p.max())
    assert mask.sum() < other.sum()  # the two orders differ here
    got = empirical(LOGITS, 40000, **kw)
    assert np.all(got[~mask] == 0)
    want = np.where(mask, p, 0) / np.where(mask, p, 0).sum()
    np.testing.assert_allclose(got, want, atol=0.01)


def test_zero_mass_tokens_are_never_drawn():
    # Each thread's slice of the vocabulary holds one likely token among tokens whose
    # probability underflows to 0 (and masked ones): rounding in the draw must never land on
    # those.
    rng = np.random.default_rng(4)
    vocab = 4096
    row = np.full(vocab, -300.0)
    row[::8] = -np.inf
    likely = np.arange(2, vocab, 4)
    row[likely] = rng.uniform(-3, 0, likely.size)
    ids, _, _, _, _ = cuda.sample(np.repeat(row[None, :], 20000, 0).astype(np.float32), params(20000, seed=7), 0)
    assert set(np.asarray(ids)) <= set(likely.tolist())
