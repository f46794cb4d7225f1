"""Sampling parameters end to end through LLM.generate, checked against transformers' logits
where the result is determined, and behaviourally where it is random."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cserve import SamplingParams
from tests.helpers.models import check_greedy, greedy, make_llm, random_prompt

EOS = 2  # the tiny models' config.json eos_token_id


@pytest.fixture(scope="module")
def built(model_zoo):
    return model_zoo.get("llama")


@pytest.fixture(scope="module")
def llm(built):
    return make_llm(built.path, max_logprobs=20)


def _prompt(built, n=12, seed=0):
    return random_prompt(np.random.default_rng(seed), n, built.vocab_size)


def _gen(llm, prompt, **kw):
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(**kw))
    return out.outputs[0]


def _greedy_tokens(llm, prompt, n=10):
    return _gen(llm, prompt, temperature=0, max_tokens=n, ignore_eos=True).token_ids


# ---- seeds ----


def test_seeded_output_does_not_depend_on_the_batch(built, llm):
    prompt = _prompt(built, 15, seed=1)
    sp = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    (alone,) = llm.generate({"prompt_token_ids": prompt}, sp)
    others = [_prompt(built, n, seed=10 + n) for n in (3, 40, 15, 7, 60)]
    batch = [{"prompt_token_ids": p} for p in others[:2]] + [{"prompt_token_ids": prompt}] + \
            [{"prompt_token_ids": p} for p in others[2:]]
    mixed = [SamplingParams(temperature=0.7, max_tokens=9, ignore_eos=True),
             SamplingParams(temperature=1.3, seed=5, max_tokens=20, ignore_eos=True), sp,
             SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
             SamplingParams(temperature=1.0, top_k=5, max_tokens=30, ignore_eos=True),
             SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True, n=2)]
    outs = llm.generate(batch, mixed)
    assert outs[2].outputs[0].token_ids == alone.outputs[0].token_ids
    # The same seed on another prompt's completion 0 is independent of this one; on the same prompt,
    # a fresh engine with another engine seed gives the same tokens.
    other = make_llm(built.path, seed=99, max_num_batched_tokens=16)
    (again,) = other.generate({"prompt_token_ids": prompt}, sp)
    assert again.outputs[0].token_ids == alone.outputs[0].token_ids


def test_different_seeds_differ(built, llm):
    prompt = _prompt(built, 10, seed=2)
    seqs = {tuple(_gen(llm, prompt, temperature=1.5, seed=s, max_tokens=12, ignore_eos=True).token_ids)
            for s in range(6)}
    assert len(seqs) >= 4


def test_unseeded_requests_differ(built, llm):
    prompt = _prompt(built, 10, seed=3)
    outs = llm.generate([{"prompt_token_ids": prompt}] * 6, SamplingParams(temperature=1.5, max_tokens=12,
                                                                           ignore_eos=True))
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) >= 4


def test_n_completions_use_seed_plus_index(built, llm):
    prompt = _prompt(built, 10, seed=4)
    (out,) = llm.generate({"prompt_token_ids": prompt},
                          SamplingParams(n=3, temperature=1.2, seed=40, max_tokens=10, ignore_eos=True, logprobs=1))
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 10 and c.finish_reason == "length" for c in out.outputs)
    assert all(len(c.logprobs) == 10 for c in out.outputs)
    for i, c in enumerate(out.outputs):
        assert c.token_ids == _gen(llm, prompt, temperature=1.2, seed=40 + i, max_tokens=10, ignore_eos=True).token_ids
    assert len({tuple(c.token_ids) for c in out.outputs}) >= 2


def test_n_greedy_completions_are_identical(built, llm):
    prompt = _prompt(built, 13, seed=5)
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=8, n=4))
    assert len(out.outputs) == 4
    ref = built.logprobs(prompt + out.outputs[0].token_ids)
    for c in out.outputs:
        assert c.token_ids == out.outputs[0].token_ids
        check_greedy(c, prompt, ref)
    assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == 13


# ---- filters that reduce to greedy ----


@pytest.mark.parametrize("kw", [dict(top_k=1), dict(top_p=1e-4), dict(min_p=1.0), dict(temperature=1e-6)],
                         ids=["top_k=1", "top_p=1e-4", "min_p=1", "tiny_temperature"])
def test_filters_that_keep_one_token_equal_greedy(built, llm, kw):
    prompt = _prompt(built, 11, seed=6)
    params = dict(temperature=1.0, seed=7, max_tokens=10, ignore_eos=True)
    params.update(kw)
    assert _gen(llm, prompt, **params).token_ids == _greedy_tokens(llm, prompt)


def test_temperature_sampling_follows_the_distribution(built, llm):
    """400 seeded single-token draws at one position against softmax(logits / T) from transformers."""
    prompt = _prompt(built, 9, seed=8)
    logits = built.logits(prompt)[-1].astype(np.float64)
    N = 400
    for kw in (dict(temperature=1.7), dict(temperature=1.7, top_k=3), dict(temperature=1.7, top_p=0.6),
               dict(temperature=1.7, min_p=0.3)):
        outs = llm.generate([{"prompt_token_ids": prompt}] * N,
                            [SamplingParams(max_tokens=1, seed=s, ignore_eos=True, **kw) for s in range(N)])
        counts = np.bincount([o.outputs[0].token_ids[0] for o in outs], minlength=built.vocab_size) / N
        z = logits / kw["temperature"]
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p)
        keep = np.ones_like(p, dtype=bool)
        if "top_k" in kw:
            keep[order[kw["top_k"]:]] = False
        if "top_p" in kw:
            cum = np.cumsum(p[order])
            cut = int(np.searchsorted(cum, kw["top_p"])) + 1
            keep[order[cut:]] = False
        if "min_p" in kw:
            keep &= p >= kw["min_p"] * p.max()
        q = np.where(keep, p, 0)
        q /= q.sum()
        assert counts[~keep].sum() == 0, f"{kw}: sampled a filtered-out token"
        tol = 4 * np.sqrt(q * (1 - q) / N) + 0.01
        assert (np.abs(counts - q) <= tol).all(), f"{kw}: freq {counts[order[:5]]} vs p {q[order[:5]]}"


# ---- constraints ----


def test_allowed_token_ids_restricts(built, llm):
    prompt = _prompt(built, 10, seed=9)
    allowed = [10, 20, 30, 40]
    c = _gen(llm, prompt, temperature=1.0, seed=3, max_tokens=20, ignore_eos=True, allowed_token_ids=allowed)
    assert set(c.token_ids) <= set(allowed)
    # Greedy: the best allowed token by transformers' logits, step by step.
    c = _gen(llm, prompt, temperature=0, max_tokens=8, ignore_eos=True, allowed_token_ids=allowed, logprobs=0)
    ref = built.logprobs(prompt + c.token_ids)
    for j, t in enumerate(c.token_ids):
        row = ref[len(prompt) - 1 + j]
        assert row[t] >= row[allowed].max() - 1e-3
        # Logprobs are the model's raw ones, before the restriction.
        assert c.logprobs[j][t].logprob == pytest.approx(row[t], abs=1e-3)


def test_logit_bias_forces_a_token(built, llm):
    prompt = _prompt(built, 10, seed=10)
    for temperature in (0.0, 1.0):
        c = _gen(llm, prompt, temperature=temperature, seed=1, max_tokens=6, ignore_eos=True, logit_bias={77: 100.0})
        assert c.token_ids == [77] * 6
    # A large negative bias removes the greedy choice.
    first = _greedy_tokens(llm, prompt, 1)[0]
    c = _gen(llm, prompt, temperature=0, max_tokens=1, ignore_eos=True, logit_bias={first: -100.0})
    assert c.token_ids[0] != first


def test_eos_stops_and_min_tokens_suppresses_it(built, llm):
    prompt = _prompt(built, 10, seed=11)
    c = _gen(llm, prompt, temperature=0, max_tokens=20, logit_bias={EOS: 100.0})
    assert c.token_ids == [EOS] and c.finish_reason == "stop" and c.stop_reason is None
    c = _gen(llm, prompt, temperature=0, max_tokens=20, min_tokens=5, logit_bias={EOS: 100.0})
    assert len(c.token_ids) == 6 and EOS not in c.token_ids[:5] and c.token_ids[5] == EOS
    assert c.finish_reason == "stop"
    c = _gen(llm, prompt, temperature=1.0, seed=2, max_tokens=20, min_tokens=5, logit_bias={EOS: 100.0})
    assert len(c.token_ids) == 6 and c.token_ids[5] == EOS
    c = _gen(llm, prompt, temperature=0, max_tokens=7, ignore_eos=True, logit_bias={EOS: 100.0})
    assert c.token_ids == [EOS] * 7 and c.finish_reason == "length"


def test_generation_config_eos(model_zoo):
    built = model_zoo.custom("gen_eos", "llama", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                             num_key_value_heads=4, generation_eos=[7, 9])
    llm = make_llm(built.path)
    assert set(llm.model_info.eos_token_ids) >= {2, 7, 9}
    prompt = _prompt(built, 8, seed=12)
    for eos in (2, 7, 9):
        c = _gen(llm, prompt, temperature=0, max_tokens=10, logit_bias={eos: 100.0})
        assert c.token_ids == [eos] and c.finish_reason == "stop"
        c = _gen(llm, prompt, temperature=0, max_tokens=10, min_tokens=3, logit_bias={eos: 100.0})
        assert len(c.token_ids) == 4 and c.token_ids[-1] == eos


def test_stop_token_ids(built, llm):
    prompt = _prompt(built, 10, seed=13)
    base = _greedy_tokens(llm, prompt, 12)
    t = base[3]
    k = base.index(t)
    c = _gen(llm, prompt, temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[t, 255])
    assert c.token_ids == base[:k + 1]
    assert c.finish_reason == "stop" and c.stop_reason == t
    # Before min_tokens the stop tokens are masked out, like EOS.
    c = _gen(llm, prompt, temperature=0, max_tokens=12, ignore_eos=True, stop_token_ids=[t], min_tokens=k + 2)
    assert t not in c.token_ids[:k + 2]


def test_max_tokens_gives_length(built, llm):
    prompt = _prompt(built, 10, seed=14)
    for n in (1, 5):
        c = _gen(llm, prompt, temperature=0.8, seed=0, max_tokens=n, ignore_eos=True)
        assert len(c.token_ids) == n and c.finish_reason == "length" and c.stop_reason is None


# ---- logprobs ----


def _check_top(entry: dict, chosen: int, row: np.ndarray, n: int) -> None:
    order = np.argsort(-row, kind="stable")
    top = [int(t) for t in order[:n]]
    assert set(top) <= set(entry)
    assert len(entry) == n + (chosen not in top)
    for r, t in enumerate(top, start=1):
        assert entry[t].rank == r
        assert entry[t].logprob == pytest.approx(row[t], abs=1e-3)
    assert entry[chosen].rank == 1 + int((row > row[chosen]).sum())
    assert entry[chosen].logprob == pytest.approx(row[chosen], abs=1e-3)
    ranked = sorted(entry.values(), key=lambda lp: lp.rank)
    assert all(a.logprob >= b.logprob for a, b in zip(ranked, ranked[1:]))


def test_top_logprobs_with_ranks(built, llm):
    prompt = _prompt(built, 10, seed=15)
    for kw in (dict(temperature=0), dict(temperature=3.0, seed=11)):
        c = _gen(llm, prompt, max_tokens=10, ignore_eos=True, logprobs=5, **kw)
        ref = built.logprobs(prompt + c.token_ids)
        for j, t in enumerate(c.token_ids):
            _check_top(c.logprobs[j], t, ref[len(prompt) - 1 + j], 5)
        assert c.cumulative_logprob == pytest.approx(sum(c.logprobs[j][t].logprob for j, t in enumerate(c.token_ids)),
                                                     abs=1e-3)
    # At temperature 3 some sampled token lies outside the top 5 (so its own entry is added).
    assert any(c.logprobs[j][t].rank > 5 for j, t in enumerate(c.token_ids))


def test_prompt_logprobs_top_n(built, llm):
    prompt = _prompt(built, 14, seed=16)
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=1, prompt_logprobs=3, temperature=0))
    ref = built.logprobs(prompt)
    assert out.prompt_logprobs[0] is None
    for i in range(1, len(prompt)):
        _check_top(out.prompt_logprobs[i], prompt[i], ref[i - 1], 3)


def test_logprobs_capped_by_max_logprobs(built):
    llm = make_llm(built.path, max_logprobs=5)
    prompt = _prompt(built, 5, seed=17)
    c = _gen(llm, prompt, max_tokens=2, logprobs=5, temperature=0)
    assert all(len(d) == 5 for d in c.logprobs)
    with pytest.raises(ValueError, match="max allowed: 5"):
        _gen(llm, prompt, max_tokens=2, logprobs=6)
    with pytest.raises(ValueError, match="max allowed: 5"):
        _gen(llm, prompt, max_tokens=2, prompt_logprobs=6)
    with pytest.raises(ValueError):
        _gen(llm, prompt, max_tokens=2, logprobs=-1)  # the whole vocabulary is above the cap
    # The engine is still usable.
    assert len(_gen(llm, prompt, max_tokens=2).token_ids) == 2


def test_full_vocab_logprobs_without_cap(built):
    llm = make_llm(built.path, max_logprobs=-1)
    prompt = _prompt(built, 6, seed=18)
    c = _gen(llm, prompt, max_tokens=2, logprobs=-1, temperature=0)
    ref = built.logprobs(prompt + c.token_ids)
    for j, d in enumerate(c.logprobs):
        assert len(d) == built.vocab_size
        assert sorted(lp.rank for lp in d.values()) == list(range(1, built.vocab_size + 1))
        assert math.isclose(sum(math.exp(lp.logprob) for lp in d.values()), 1.0, abs_tol=1e-4)
        row = ref[len(prompt) - 1 + j]
        assert max(abs(d[t].logprob - row[t]) for t in range(built.vocab_size)) <= 1e-3


# ---- penalties ----


def _penalized(logits: np.ndarray, prompt: list[int], output: list[int], rep: float, pres: float, freq: float):
    """vLLM's penalties: repetition over prompt and output (divide positive, multiply negative logits),
    presence and frequency over the output only."""
    x = logits.astype(np.float64).copy()
    seen = sorted(set(prompt) | set(output))
    if rep != 1.0:
        x[seen] = np.where(x[seen] > 0, x[seen] / rep, x[seen] * rep)
    counts = np.bincount(output, minlength=len(x)) if output else np.zeros(len(x))
    x -= freq * counts + pres * (counts > 0)
    return x


PENALTIES = [dict(repetition_penalty=1.8), dict(repetition_penalty=0.5), dict(presence_penalty=1.5),
             dict(frequency_penalty=1.0), dict(frequency_penalty=-1.0, presence_penalty=-0.5),
             dict(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5)]


@pytest.mark.parametrize("pen", PENALTIES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_penalties_match_a_python_reimplementation(built, llm, pen):
    rep, pres, freq = pen.get("repetition_penalty", 1.0), pen.get("presence_penalty", 0.0), pen.get(
        "frequency_penalty", 0.0)
    changed = False
    for seed in range(4):
        # Repetitive prompts so that penalties bite.
        prompt = _prompt(built, 6, seed=100 + seed) * 3
        c = _gen(llm, prompt, temperature=0, max_tokens=16, ignore_eos=True, logprobs=0, **pen)
        logits = built.logits(prompt + c.token_ids)
        for j, t in enumerate(c.token_ids):
            x = _penalized(logits[len(prompt) - 1 + j], prompt, c.token_ids[:j], rep, pres, freq)
            assert x[t] >= x.max() - 1e-3, f"step {j}: chose {t} ({x[t]}), penalized argmax {x.argmax()} ({x.max()})"
        changed |= c.token_ids != _greedy_tokens(llm, prompt, 16)
    assert changed, "the penalty never changed a greedy continuation"


def test_penalties_push_in_the_right_direction(built, llm):
    rng = np.random.default_rng(19)

    def repeats(toks):
        return len(toks) - len(set(toks))

    plain = more = less = 0
    for _ in range(5):
        prompt = random_prompt(rng, 8, built.vocab_size)
        plain += repeats(_greedy_tokens(llm, prompt, 24))
        less += repeats(_gen(llm, prompt, temperature=0, max_tokens=24, ignore_eos=True, presence_penalty=2.0,
                             frequency_penalty=2.0).token_ids)
        more += repeats(_gen(llm, prompt, temperature=0, max_tokens=24, ignore_eos=True,
                             frequency_penalty=-2.0).token_ids)
    assert less <= plain <= more
    assert less < more


def test_logprobs_zero_gives_only_the_chosen_token(built, llm):
    prompt = _prompt(built, 9, seed=20)
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0.9, seed=4, max_tokens=5,
                                                                       ignore_eos=True, logprobs=0, prompt_logprobs=0))
    c = out.outputs[0]
    assert [list(d) for d in c.logprobs] == [[t] for t in c.token_ids]
    assert [list(d) for d in out.prompt_logprobs[1:]] == [[t] for t in prompt[1:]]
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=3, ignore_eos=True))
    assert out.outputs[0].logprobs is None and out.outputs[0].cumulative_logprob is None
    assert out.prompt_logprobs is None


def test_eos_list_in_config(built, tmp_path):
    from tests.helpers.models import with_config

    path = with_config(built, tmp_path / "m", eos_token_id=[2, 11])
    llm = make_llm(path)
    assert set(llm.model_info.eos_token_ids) >= {2, 11}
    c = _gen(llm, _prompt(built, 8, seed=21), temperature=0, max_tokens=10, logit_bias={11: 100.0})
    assert c.token_ids == [11] and c.finish_reason == "stop"
