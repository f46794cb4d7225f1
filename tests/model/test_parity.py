"""Every family against transformers in float32: prompt logprobs at every position and
greedy continuations, alone, in a mixed batch, chunked, with prefix-cache hits and
after preemption."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import SamplingParams
from tests.helpers.models import FAMILY_ARCH, check_generate, check_greedy, check_request, greedy, make_llm, random_prompt, with_config

FAMILIES = ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3", "phi3", "gemma",
            "gemma2", "gemma3", "mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"]


def _prompts(built, lengths, seed):
    rng = np.random.default_rng(seed)
    return [random_prompt(rng, n, built.vocab_size) for n in lengths]


@pytest.mark.parametrize("family", FAMILIES)
def test_alone(model_zoo, family):
    built = model_zoo.get(family)
    llm = make_llm(built.path)
    assert llm.model_info.architecture == FAMILY_ARCH[family]
    assert llm.model_info.vocab_size == built.vocab_size
    # 40 tokens is longer than Mistral's window of 12; 1 token has no prompt logprob to check.
    for prompt in _prompts(built, [40, 1, 17], seed=1):
        (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=16, prompt_logprobs=5))
        assert out.prompt_token_ids == prompt
        assert len(out.outputs) == 1 and len(out.outputs[0].token_ids) == 16
        assert out.outputs[0].finish_reason == "length"
        check_request(built, out)


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_of_32_mixes_prefill_and_decode(model_zoo, family):
    built = model_zoo.get(family)
    # A budget of 96 tokens per step: long prompts are still prefilling while short ones decode.
    llm = make_llm(built.path, max_num_batched_tokens=96, max_num_seqs=32)
    lengths = [1 + (i * 13) % 61 for i in range(32)]
    prompts = _prompts(built, lengths, seed=2)
    params = [greedy(max_tokens=4 + i % 9) for i in range(32)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    assert len(outs) == 32
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        assert out.prompt_token_ids == prompt
        assert len(out.outputs[0].token_ids) == 4 + i % 9
        check_request(built, out)
    stats = llm.engine.stats()
    assert stats.generation_tokens == sum(4 + i % 9 for i in range(32))
    assert stats.num_running == 0 and stats.num_waiting == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill(model_zoo, family):
    built = model_zoo.get(family)
    prompts = _prompts(built, [50, 37, 5], seed=3)
    # Chunks forced by the step budget...
    llm = make_llm(built.path, max_num_batched_tokens=16, enable_chunked_prefill=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(max_tokens=10, prompt_logprobs=5))
    for out in outs:
        check_request(built, out)
    assert llm.engine.stats().num_steps >= (50 + 37 + 5) // 16
    # ... and by the per-request cap.
    llm = make_llm(built.path, max_num_batched_tokens=64, long_prefill_token_threshold=8)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(max_tokens=10, prompt_logprobs=5))
    for out in outs:
        check_request(built, out)
    assert llm.engine.stats().num_steps >= 50 // 8


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cache_hits(model_zoo, family):
    built = model_zoo.get(family)
    llm = make_llm(built.path, enable_prefix_caching=True, block_size=16)
    rng = np.random.default_rng(4)
    prefix = random_prompt(rng, 48, built.vocab_size)
    first = prefix + random_prompt(rng, 7, built.vocab_size)
    second = prefix + random_prompt(rng, 9, built.vocab_size)
    # Prompt logprobs bypass the prefix cache, so only the sampled tokens carry logprobs here.
    params = greedy(max_tokens=12, prompt_logprobs=None)
    (a,) = llm.generate({"prompt_token_ids": first}, params)
    assert a.num_cached_tokens == 0
    (b,) = llm.generate({"prompt_token_ids": second}, params)
    assert b.num_cached_tokens == 48
    (c,) = llm.generate({"prompt_token_ids": first}, params)
    assert c.num_cached_tokens == 48  # (55 - 1) // 16 full blocks; the last token is recomputed
    for out in (a, b, c):
        check_request(built, out, prompt_logprobs=False)
    assert c.outputs[0].token_ids == a.outputs[0].token_ids
    # Both in one batch: the second one hits the blocks the first registers.
    outs = llm.generate([{"prompt_token_ids": second}, {"prompt_token_ids": first}], params)
    for out in outs:
        assert out.num_cached_tokens == 48
        check_request(built, out, prompt_logprobs=False)
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits > 0 and stats.prefix_cache_queries >= stats.prefix_cache_hits


@pytest.mark.parametrize("family", FAMILIES)
def test_preemption_recomputes(model_zoo, family):
    built = model_zoo.get(family)
    # 6 requests of 20 + 16 tokens need 5 blocks of 8 each; 12 blocks hold only two of them at the end.
    llm = make_llm(built.path, num_gpu_blocks_override=12, block_size=8, max_num_seqs=6)
    prompts = _prompts(built, [20, 21, 19, 22, 20, 18], seed=5)
    params = [greedy(max_tokens=16, prompt_logprobs=0 if i % 2 == 0 else None) for i in range(6)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    stats = llm.engine.stats()
    assert stats.num_preemptions > 0
    for i, out in enumerate(outs):
        assert len(out.outputs[0].token_ids) == 16
        check_request(built, out, prompt_logprobs=i % 2 == 0)
    assert stats.num_free_blocks == 12


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_other_block_sizes(model_zoo, family):
    built = model_zoo.get(family)
    prompt = _prompts(built, [45], seed=6)[0]
    for bs in (1, 8, 32):
        llm = make_llm(built.path, block_size=bs)
        (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=8))
        check_request(built, out)


def test_mistral_window_matters(model_zoo, tmp_path):
    """Without the window, Mistral's logprobs past the window differ: the parity above is not vacuous.
    (--disable-sliding-window would cap the context at the window, as in vLLM.)"""
    built = model_zoo.get("mistral")
    prompt = _prompts(built, [40], seed=7)[0]
    ref = built.logprobs(prompt)
    llm = make_llm(with_config(built, tmp_path / "m", sliding_window=None))
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))
    got = np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, 40)])
    want = np.array([ref[i - 1, prompt[i]] for i in range(1, 40)])
    # Positions inside the window agree; later ones must not all agree.
    assert np.abs(got[:12] - want[:12]).max() <= 1e-3
    assert np.abs(got[12:] - want[12:]).max() > 1e-2


def test_greedy_matches_transformers_generate(model_zoo):
    """Token ids equal transformers' own greedy generate() (incremental, with its KV cache)."""
    built = model_zoo.get("llama")
    check_generate(built, _prompts(built, [23], seed=8)[0])


def test_logprobs_without_prompt_logprobs(model_zoo):
    built = model_zoo.get("qwen2")
    prompt = _prompts(built, [30], seed=9)[0]
    llm = make_llm(built.path)
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=6, logprobs=0,
                                                                        ignore_eos=True))
    assert out.prompt_logprobs is None
    ref = built.logprobs(prompt + out.outputs[0].token_ids)
    check_greedy(out.outputs[0], prompt, ref)
    # The cumulative logprob is the sum of the chosen tokens' logprobs.
    total = sum(d[t].logprob for d, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids))
    assert out.outputs[0].cumulative_logprob == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_long_context_decode(model_zoo, family):
    """Hundreds of keys per decode step (the attention splits them over parts), next to tiny sequences."""
    built = model_zoo.get(family)
    prompts = _prompts(built, [450, 1, 3, 300], seed=10)
    llm = make_llm(built.path, max_model_len=500)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(max_tokens=10, prompt_logprobs=5))
    for out in outs:
        check_request(built, out)
