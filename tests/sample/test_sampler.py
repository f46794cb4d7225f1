"""The sampler on rows of logits of a real vocabulary's size, through the C++ Sampler directly:
plain temperature sampling draws from softmax(logits / T) over every block of the row it skips or
walks, never draws an impossible (masked or NaN) token, and repeats itself for one seed."""

from __future__ import annotations

import numpy as np
import pytest

from cserve._core import testing as T


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    finite = np.isfinite(z)
    p = np.zeros_like(z)
    p[finite] = np.exp(z[finite] - z[finite].max())
    return p / p.sum()


def _check_frequencies(tokens: list[int], p: np.ndarray) -> None:
    n = len(tokens)
    freq = np.bincount(tokens, minlength=p.size) / n
    assert freq[p == 0].sum() == 0, "drew an impossible token"
    tol = 5 * np.sqrt(p * (1 - p) / n) + 2e-4
    bad = np.flatnonzero(np.abs(freq - p) > tol)
    assert bad.size == 0, f"tokens {bad[:5]}: freq {freq[bad[:5]]} vs p {p[bad[:5]]}"
    # And the mass of each run of 100 tokens (a draw that skipped or walked blocks wrongly moves
    # mass between them while each token's share stays small).
    runs = np.add.reduceat(freq, np.arange(0, p.size, 100)), np.add.reduceat(p, np.arange(0, p.size, 100))
    tol = 5 * np.sqrt(runs[1] * (1 - runs[1]) / n) + 2e-4
    assert (np.abs(runs[0] - runs[1]) <= tol).all()


@pytest.mark.parametrize("vocab", [1000, 49152])
def test_temperature_sampling_follows_the_distribution(vocab):
    # 1000: three whole blocks of 256 and a short one; 49152: SmolLM2's vocabulary. The mass is
    # spread over every block, with heavier tokens in the first and the last one.
    rng = np.random.default_rng(vocab)
    logits = rng.standard_normal(vocab).astype(np.float32)
    logits[[3, vocab // 2, vocab - 1]] += np.float32(6.0)
    for temperature in (1.0, 0.7):
        p = _softmax(logits, temperature)
        draws = T.sample_draws(logits, temperature, draws=20000, seed=11)
        _check_frequencies(draws, p)


def test_masked_and_nan_logits_are_never_drawn():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(1000).astype(np.float32)
    logits[::3] = -np.inf
    logits[1::7] = np.nan
    draws = T.sample_draws(logits, 1.0, draws=5000, seed=5)
    assert all(np.isfinite(logits[t]) for t in draws)
    _check_frequencies(draws, _softmax(np.where(np.isnan(logits), -np.inf, logits), 1.0))


def test_the_only_possible_token_in_the_last_block():
    logits = np.full(1000, -np.inf, dtype=np.float32)
    logits[999] = 0.5
    assert set(T.sample_draws(logits, 1.0, draws=200, seed=1)) == {999}
    logits[0] = 0.5  # and two, at both ends
    assert set(T.sample_draws(logits, 1.0, draws=400, seed=2)) == {0, 999}


def test_one_seed_draws_the_same_tokens():
    logits = np.random.default_rng(4).standard_normal(5000).astype(np.float32)
    assert T.sample_draws(logits, 0.9, draws=300, seed=9) == T.sample_draws(logits, 0.9, draws=300, seed=9)
    assert T.sample_draws(logits, 0.9, draws=300, seed=9) != T.sample_draws(logits, 0.9, draws=300, seed=10)
