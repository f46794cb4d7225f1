"""Speculative decoding by n-gram prompt lookup: the proposer's choice, the config's checks and
refusals, and that the output is the target model's exactly: greedy token for token, seeded
sampling token for token (the CPU sampler draws once per output token), sampled distributions
(a chi-square test that a wrong rejection rule fails), stop conditions inside an accepted run,
and batches mixing speculating and plain requests under chunked prefill, prefix caching and
preemption."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from cserve import SamplingParams, _core
from cserve.cli.speculative_config import speculative_fields
from tests.helpers.models import make_llm, random_prompt, with_config

# Every draft verified (cserve's auto_disable off): these tests need drafts in every step.
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "prompt_lookup_max": 4,
         "auto_disable": False}
propose = _core.testing.ngram_propose


@pytest.fixture(scope="module")
def built(model_zoo):
    return model_zoo.get("llama")


@pytest.fixture(scope="module")
def prompts(built):
    rng = np.random.default_rng(7)
    segment = random_prompt(rng, 12, built.vocab_size)
    return {"repetitive": segment * 4, "random": random_prompt(rng, 40, built.vocab_size)}


def spec_counts(llm) -> tuple[int, int, int]:
    s = llm.engine.stats()
    return s.spec_decode_num_drafts, s.spec_decode_num_draft_tokens, s.spec_decode_num_accepted_tokens


def tokens(outs) -> list[list[int]]:
    return [list(c.token_ids) for o in outs for c in o.outputs]


# --- the proposer --------------------------------------------------------------------------------

def test_proposer_takes_the_longest_recurring_suffix():
    # vLLM's example: [4, 2, 3] does not recur, [2, 3] does; three tokens follow it.
    assert propose([1, 2, 3, 4, 2, 3], 4, 2, 3) == [4, 2, 3]
    # The longest n-gram wins over a shorter, later one.
    assert propose([7, 8, 9, 5, 6, 1, 9, 5, 6, 2, 8, 9, 5, 6], 2, 2, 4) == [1, 9]
    # Among equally long ones, the earliest occurrence.
    assert propose([1, 2, 9, 1, 2, 8, 1, 2], 2, 1, 2) == [9, 1]
    # k caps the draft; nothing recurs: no draft; shorter than min_n: no draft.
    assert propose([5, 6, 7, 5, 6], 1, 2, 2) == [7]
    assert propose([1, 2, 3, 4], 3, 1, 3) == []
    assert propose([3, 4, 3], 3, 3, 3) == []
    # prompt_lookup_max caps the match: past it, ties go to the earliest occurrence.
    assert propose([1, 2, 3, 0, 9, 3, 5, 1, 2, 3], 1, 1, 1) == [0]


# --- the config ----------------------------------------------------------------------------------

def test_config_defaults_and_checks():
    assert speculative_fields(None) == {} and speculative_fields({}) == {}
    assert speculative_fields({"method": "ngram", "num_speculative_tokens": 3}) == {
        "speculative_method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 5, "prompt_lookup_max": 5,
        "speculative_disable_by_batch_size": 0, "speculative_auto_disable": True}
    fields = speculative_fields({"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 4,
                                 "auto_disable": False})
    assert fields["speculative_disable_by_batch_size"] == 4 and fields["speculative_auto_disable"] is False
    with pytest.raises(ValueError, match="threshold of disabling speculative decoding is > 1"):
        speculative_fields({"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 1})
    with pytest.raises(ValueError, match="auto_disable must be true or false"):
        speculative_fields({"method": "ngram", "num_speculative_tokens": 3, "auto_disable": 1})
    assert speculative_fields({"model": "[ngram]", "num_speculative_tokens": 2, "prompt_lookup_max": 4})[
        "prompt_lookup_min"] == 4
    with pytest.raises(ValueError, match="prompt_lookup_min=4 must be <= prompt_lookup_max=2"):
        speculative_fields({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 4,
                            "prompt_lookup_max": 2})
    with pytest.raises(ValueError, match="num_speculative_tokens must be >= 1"):
        speculative_fields({"method": "ngram", "num_speculative_tokens": 0})
    with pytest.raises(ValueError, match="without speculative model"):
        speculative_fields({"num_speculative_tokens": 3})
    with pytest.raises(ValueError, match="unknown key"):
        speculative_fields({"method": "ngram", "num_speculative_tokens": 3, "lookup": 2})


@pytest.mark.parametrize("config,name", [
    ({"method": "medusa", "model": "m", "num_speculative_tokens": 3}, "medusa"),
    ({"method": "deepseek_mtp", "num_speculative_tokens": 1}, "mtp"),
])
def test_other_methods_are_refused_by_name(built, config, name):
    with pytest.raises(NotImplementedError, match=f"method '{name}' is not supported yet"):
        speculative_fields(config)
    with pytest.raises(NotImplementedError, match=f"'{name}'"):
        make_llm(built.path, speculative_config=config)


def test_serve_flags_refuse_other_methods_and_the_old_flags():
    from cserve.cli.args import ServeArgsError, UnsupportedFlagError, engine_options, parse_serve_args

    args = parse_serve_args(["m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    assert engine_options(args)["num_speculative_tokens"] == 3 and engine_options(args)["prompt_lookup_max"] == 5
    with pytest.raises(UnsupportedFlagError, match="--speculative-config: speculative decoding method 'medusa'"):
        parse_serve_args(["m", "--speculative-config", '{"method": "medusa", "model": "x", "num_speculative_tokens": 2}'])
    with pytest.raises(ServeArgsError, match="prompt_lookup_min=3 must be <= prompt_lookup_max=1"):
        parse_serve_args(["m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 2, '
                                                      '"prompt_lookup_min": 3, "prompt_lookup_max": 1}'])
    for old in (["--speculative-model", "[ngram]"], ["--num-speculative-tokens", "3"], ["--ngram-prompt-lookup-max", "4"]):
        with pytest.raises(UnsupportedFlagError, match=old[0]):
            parse_serve_args(["m", *old])


# --- greedy: token for token ---------------------------------------------------------------------

def test_greedy_is_unchanged_and_drafts_are_accepted(built, prompts):
    sp = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True, logprobs=2)
    plain = make_llm(built.path)
    spec = make_llm(built.path, speculative_config=NGRAM)
    for name, prompt in prompts.items():
        want = plain.generate({"prompt_token_ids": prompt}, sp, use_tqdm=False)[0].outputs[0]
        got = spec.generate({"prompt_token_ids": prompt}, sp, use_tqdm=False)[0].outputs[0]
        assert list(got.token_ids) == list(want.token_ids), name
        # Logprobs of every accepted token are those of its own position.
        for a, b in zip(got.logprobs, want.logprobs):
            assert a.keys() == b.keys()
            for t in a:
                assert a[t].logprob == pytest.approx(b[t].logprob, abs=1e-4)
    drafts, draft_tokens, accepted = spec_counts(spec)
    assert drafts > 0 and 0 < accepted <= draft_tokens
    per_pos = spec.engine.stats().spec_decode_num_accepted_tokens_per_pos
    assert len(per_pos) == NGRAM["num_speculative_tokens"] and sum(per_pos) == accepted
    assert spec.engine.stats().num_free_blocks == spec.model_info.num_kv_blocks  # rejected slots released
    assert spec.model_info.speculative_method == "ngram" and spec.model_info.num_speculative_tokens == 4


def test_mixed_batch_with_chunked_prefill_prefix_caching_and_preemption(built, prompts):
    rng = np.random.default_rng(3)
    shared = prompts["repetitive"]
    batch = [shared, shared + [5, 6], prompts["random"], random_prompt(rng, 70, built.vocab_size),
             shared[:20] * 3, random_prompt(rng, 9, built.vocab_size)]
    sps = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in (30, 25, 30, 20, 35, 30)]
    # A small token budget chunks the long prompts beside decoding requests; a small cache preempts.
    options = dict(max_num_batched_tokens=32, block_size=8, num_gpu_blocks_override=24, enable_prefix_caching=True)
    plain = make_llm(built.path, **options)
    spec = make_llm(built.path, speculative_config=NGRAM, **options)
    inputs = [{"prompt_token_ids": p} for p in batch]
    want = tokens(plain.generate(inputs, sps, use_tqdm=False))
    got = tokens(spec.generate(inputs, sps, use_tqdm=False))
    assert got == want
    stats = spec.engine.stats()
    assert stats.spec_decode_num_accepted_tokens > 0
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.num_free_blocks == 24
    # The prefix cache holds committed tokens only: a request after them matches the plain engine.
    again = tokens(spec.generate(inputs[:2], sps[:2], use_tqdm=False))
    assert again == want[:2]


def test_disable_by_batch_size_and_the_automatic_rule_keep_greedy_output(built, prompts):
    sp = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    batch = [{"prompt_token_ids": prompts["repetitive"][i:]} for i in range(3)]
    plain = make_llm(built.path)
    want = tokens(plain.generate(batch, sp, use_tqdm=False))
    # Three requests run side by side the whole time: more than 2, so none drafts.
    by_batch = make_llm(built.path, speculative_config={**NGRAM, "disable_by_batch_size": 2})
    assert tokens(by_batch.generate(batch, sp, use_tqdm=False)) == want
    assert spec_counts(by_batch) == (0, 0, 0)
    # Alone, the same request drafts.
    assert tokens(by_batch.generate(batch[:1], sp, use_tqdm=False)) == want[:1]
    assert spec_counts(by_batch)[0] > 0
    # The automatic rule (the default) decides from measured step times: whatever it decides,
    # the text is the same; its first decode steps try drafts.
    auto = make_llm(built.path, speculative_config={k: v for k, v in NGRAM.items() if k != "auto_disable"})
    assert tokens(auto.generate(batch, sp, use_tqdm=False)) == want
    assert spec_counts(auto)[0] > 0


# --- sampling: the target's distribution ---------------------------------------------------------

def test_seeded_sampling_is_unchanged_with_every_parameter(built, prompts):
    """The CPU sampler verifies rows in order and draws once per output token, so with the same
    seed the sampled tokens are those without speculation, penalties and all."""
    prompt = prompts["repetitive"]
    bias = {t: 3.0 for t in prompt[:12]}  # the pattern is likely, so drafts are accepted
    params = [
        SamplingParams(temperature=0.8, seed=11, max_tokens=30, ignore_eos=True, logit_bias=bias),
        SamplingParams(temperature=1.2, top_k=20, top_p=0.9, min_p=0.02, seed=12, max_tokens=30, ignore_eos=True,
                       logit_bias=bias),
        SamplingParams(temperature=0.7, repetition_penalty=1.3, frequency_penalty=0.4, presence_penalty=0.2,
                       seed=13, max_tokens=30, ignore_eos=True, logprobs=3, logit_bias=bias),
        SamplingParams(temperature=0.5, min_tokens=20, stop_token_ids=[prompt[3]], seed=14, max_tokens=30,
                       logit_bias=bias),
    ]
    plain = make_llm(built.path)
    spec = make_llm(built.path, speculative_config=NGRAM)
    inputs = [{"prompt_token_ids": prompt}] * len(params)
    want = plain.generate(inputs, params, use_tqdm=False)
    got = spec.generate(inputs, params, use_tqdm=False)
    assert tokens(got) == tokens(want)
    assert len(got[3].outputs[0].token_ids) >= 20  # min_tokens held the stop token back
    for a, b in zip(got[2].outputs[0].logprobs, want[2].outputs[0].logprobs):
        assert {t: round(v.logprob, 4) for t, v in a.items()} == {t: round(v.logprob, 4) for t, v in b.items()}
    assert spec_counts(spec)[2] > 0


def _chi_square_critical(df: int, z: float = 3.29) -> float:
    """The chi-square quantile at p = 0.9995 (z), by Wilson and Hilferty's approximation."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def two_sample_chi_square(a: Counter, b: Counter, min_count: int = 10) -> tuple[float, int]:
    """The statistic and degrees of freedom of a homogeneity test of two samples (rare
    categories pooled)."""
    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    cells, rest = [], [0, 0]
    for k in keys:
        if a[k] + b[k] >= min_count:
            cells.append((a[k], b[k]))
        else:
            rest[0] += a[k]
            rest[1] += b[k]
    if sum(rest) > 0:
        cells.append(tuple(rest))
    na, nb = sum(a.values()), sum(b.values())
    stat = 0.0
    for x, y in cells:
        total = x + y
        ea, eb = total * na / (na + nb), total * nb / (na + nb)
        stat += (x - ea) ** 2 / ea + (y - eb) ** 2 / eb
    return stat, len(cells) - 1


def test_sampled_distribution_is_the_target_models(built, prompts):
    """Different seeds with and without speculation: the joint distribution of the output tokens
    the drafts are verified for must agree. Four allowed tokens and a prompt that repeats them
    make every step draft, with drafts often accepted and often rejected; a wrong rule on
    rejection (say, drawing again from the whole distribution) moves probability onto the draft
    and fails this test."""
    allowed = prompts["random"][:2]
    prompt = allowed * 16

    def sample(llm, seed0: int) -> Counter:
        sps = [SamplingParams(n=200, temperature=4.0, seed=seed0 + 1000 * i, max_tokens=4, ignore_eos=True,
                              allowed_token_ids=allowed) for i in range(10)]
        outs = llm.generate([{"prompt_token_ids": prompt}] * len(sps), sps, use_tqdm=False)
        # Tokens 2..4 are the verified ones (the first comes from the prefill).
        return Counter(tuple(c.token_ids[1:]) for o in outs for c in o.outputs)

    plain = make_llm(built.path)
    spec = make_llm(built.path, speculative_config={**NGRAM, "num_speculative_tokens": 3, "prompt_lookup_min": 1})
    want, got = sample(plain, 0), sample(spec, 10**6)  # disjoint seeds: independent samples
    drafts, draft_tokens, accepted = spec_counts(spec)
    assert drafts >= 2000 and 0.2 * draft_tokens < accepted < 0.8 * draft_tokens  # both outcomes are common
    stat, df = two_sample_chi_square(want, got)
    assert df >= 5
    assert stat < _chi_square_critical(df), (stat, df)


# --- stop conditions inside an accepted run ------------------------------------------------------

@pytest.fixture(scope="module")
def accepted_run(built, prompts):
    """A prompt, its greedy continuation, and a position inside a run of accepted drafts whose
    token is new to the output (a stop token there cuts accepted tokens after it). The engine's
    verification steps are replayed with the proposer: for greedy, a draft token is accepted
    exactly when it is the continuation's token."""
    plain = make_llm(built.path)
    sp = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
    lead = list(plain.generate({"prompt_token_ids": prompts["random"]}, sp, use_tqdm=False)[0].outputs[0].token_ids)
    prompt = prompts["random"] + lead[:60]  # the model's own habits are in the prompt: its drafts come true
    run = list(plain.generate({"prompt_token_ids": prompt}, sp, use_tqdm=False)[0].outputs[0].token_ids)
    k = NGRAM["num_speculative_tokens"]
    pos, inside = 0, []
    while pos + 1 < len(run):
        draft = propose(prompt + run[:pos + 1], k, NGRAM["prompt_lookup_min"], NGRAM["prompt_lookup_max"])
        n = next((j for j, t in enumerate(draft) if pos + 1 + j >= len(run) or run[pos + 1 + j] != t), len(draft))
        inside += list(range(pos + 1, pos + n))  # accepted drafts with another accepted one after them
        pos += n + 1
    at = next(i for i in inside if run[i] not in run[:i])
    return prompt, run, at


def test_stop_conditions_inside_an_accepted_run(built, accepted_run):
    prompt, run, at = accepted_run
    plain = make_llm(built.path)
    spec = make_llm(built.path, speculative_config=NGRAM)
    cases = [
        SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True, stop_token_ids=[run[at]]),
        SamplingParams(temperature=0.0, max_tokens=at + 1, ignore_eos=True),
        SamplingParams(temperature=0.0, max_tokens=at, ignore_eos=True),
    ]
    inputs = [{"prompt_token_ids": prompt}] * len(cases)
    want = plain.generate(inputs, cases, use_tqdm=False)
    got = spec.generate(inputs, cases, use_tqdm=False)
    assert tokens(got) == tokens(want)
    assert [o.outputs[0].finish_reason for o in got] == ["stop", "length", "length"]
    assert [len(o.outputs[0].token_ids) for o in got] == [at + 1, at + 1, at]
    assert spec_counts(spec)[2] > 0


def test_eos_inside_an_accepted_run(built, accepted_run, tmp_path):
    """EOS ends the request at the token that drew it, though drafts after it were accepted."""
    prompt, run, at = accepted_run
    path = with_config(built, tmp_path / "eos_variant", eos_token_id=run[at])
    (tmp_path / "eos_variant" / "generation_config.json").write_text(json.dumps({"eos_token_id": run[at]}))
    sp = SamplingParams(temperature=0.0, max_tokens=60)
    spec = make_llm(path, speculative_config=NGRAM)
    got = spec.generate({"prompt_token_ids": prompt}, sp, use_tqdm=False)
    assert tokens(got) == [run[:at + 1]]
    assert got[0].outputs[0].finish_reason == "stop"
    assert spec_counts(spec)[2] > 0


def test_structured_outputs_and_stop_strings_beside_speculation(chat_model_dir):
    """A stop string cuts text inside accepted drafts, a constrained request does not
    speculate, and the batch around them is what it is without speculation."""
    from tokenizers import Tokenizer

    from cserve import LLM, StructuredOutputsParams

    tok = Tokenizer.from_file(f"{chat_model_dir}/tokenizer.json")
    letters = [tok.token_to_id(c) for c in "ab"]  # two allowed tokens: the output loops, drafts come true
    prompt = "abababababababababab"
    plain = LLM(chat_model_dir, dtype="float32", num_threads=2, max_model_len=256)
    spec = LLM(chat_model_dir, dtype="float32", num_threads=2, max_model_len=256,
               speculative_config={**NGRAM, "prompt_lookup_min": 1})
    free_sp = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, allowed_token_ids=letters)
    text = plain.generate(prompt, free_sp, use_tqdm=False)[0].outputs[0].text
    stop = text[8:13]
    sps = [free_sp,
           SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, allowed_token_ids=letters, stop=[stop]),
           SamplingParams(temperature=0, max_tokens=30,
                          structured_outputs=StructuredOutputsParams(regex="(ab|ba)( (ab|ba))+"))]
    want = plain.generate([prompt] * 3, sps, use_tqdm=False)
    got = spec.generate([prompt] * 3, sps, use_tqdm=False)
    assert [o.outputs[0].text for o in got] == [o.outputs[0].text for o in want]
    assert tokens(got) == tokens(want)
    assert got[1].outputs[0].finish_reason == "stop" and got[1].outputs[0].text == text[:text.find(stop)]
    drafts, draft_tokens, accepted = spec_counts(spec)
    assert accepted > 0
