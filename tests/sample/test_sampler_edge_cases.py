"""The sampler on logits that leave nothing (or nonsense) to sample: every candidate masked, NaN
logits from a broken model, a huge temperature. Each is either refused when the request is added
(a 400 at the server) or has a defined outcome, on the CPU sampler and on the CPU emulation of
the device sampler; none crashes or reads out of bounds."""

from __future__ import annotations

import math

import pytest

from cserve import LLM, SamplingParams
from tests.helpers.models import build_model

EOS = 2


def _llm(path: str, **kw) -> LLM:
    return LLM(model=path, dtype="float32", num_threads=1, num_gpu_blocks_override=64, max_model_len=128, **kw)


@pytest.fixture(scope="module")
def normal(model_zoo):
    return model_zoo.get("llama")


@pytest.fixture(scope="module")
def nan_rows(tmp_path_factory):
    """A Llama whose LM head gives NaN logits for tokens 100..255 (a broken checkpoint)."""
    import torch

    built = build_model(tmp_path_factory.mktemp("nan_rows"), "llama", seed=7, hidden_size=64, intermediate_size=96,
                        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    with torch.no_grad():
        built.model.lm_head.weight[100:] = float("nan")
    built.model.save_pretrained(built.path, safe_serialization=True)
    return built


@pytest.fixture(scope="module")
def all_nan(tmp_path_factory):
    """A Llama whose every logit is NaN."""
    import torch

    built = build_model(tmp_path_factory.mktemp("all_nan"), "llama", seed=8, hidden_size=64, intermediate_size=96,
                        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False)
    with torch.no_grad():
        built.model.model.norm.weight.fill_(float("nan"))
    built.model.save_pretrained(built.path, safe_serialization=True)
    return built


SAMPLING_MODES = [
    dict(temperature=0.0),
    dict(temperature=1.0, seed=1),
    dict(temperature=0.8, top_p=0.9, seed=2),
    dict(temperature=0.8, top_k=5, seed=3),
    dict(temperature=0.8, top_k=5, top_p=0.5, min_p=0.1, seed=4),
]


def _tokens(llm: LLM, prompt: list[int], **params) -> list[int]:
    (out,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(**params), use_tqdm=False)
    return list(out.outputs[0].token_ids)


def test_allowed_ids_that_min_tokens_masks_are_refused(normal):
    llm = _llm(normal.path)
    with pytest.raises(ValueError, match="no token could be generated"):
        llm.generate({"prompt_token_ids": [5, 6, 7]},
                     SamplingParams(allowed_token_ids=[EOS, 9], stop_token_ids=[9], min_tokens=2, max_tokens=4,
                                    temperature=0.8, top_p=0.5), use_tqdm=False)
    # The engine is unharmed.
    assert len(_tokens(llm, [5, 6, 7], max_tokens=3, ignore_eos=True, temperature=0)) == 3


@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_nan_logits_are_never_sampled(nan_rows, mode):
    llm = _llm(nan_rows.path)
    toks = _tokens(llm, [5, 6, 7, 8], max_tokens=12, ignore_eos=True, **mode)
    assert len(toks) == 12 and all(0 <= t < 100 for t in toks), toks


@pytest.mark.parametrize("mode", SAMPLING_MODES)
def test_all_nan_logits_give_the_first_token(all_nan, mode):
    # No token is possible: the outcome is the first largest logit (token 0), as greedy gives.
    llm = _llm(all_nan.path)
    (out,) = llm.generate({"prompt_token_ids": [5, 6, 7]},
                          SamplingParams(max_tokens=4, ignore_eos=True, logprobs=3, **mode), use_tqdm=False)
    c = out.outputs[0]
    assert list(c.token_ids) == [0, 0, 0, 0]
    assert all(len(pos) >= 1 for pos in c.logprobs)


@pytest.mark.parametrize("temperature", [1e30, 1e300])
def test_huge_temperature_keeps_masks(normal, temperature):
    # 1/T underflows to 0 in float; masked (-inf) logits must not turn into NaN candidates.
    llm = _llm(normal.path)
    allowed = [11, 12, 13]
    for seed in range(4):
        toks = _tokens(llm, [5, 6, 7], max_tokens=8, ignore_eos=True, temperature=temperature, seed=seed,
                       allowed_token_ids=allowed)
        assert len(toks) == 8 and set(toks) <= set(allowed), toks


def test_min_tokens_masks_eos_even_with_ignore_eos(normal):
    # vLLM adds EOS to the min_tokens stop set whatever ignore_eos says.
    llm = _llm(normal.path)
    toks = _tokens(llm, [5, 6, 7], max_tokens=5, min_tokens=3, ignore_eos=True, temperature=0,
                   allowed_token_ids=[EOS, 40], logit_bias={EOS: 100.0})
    assert toks[:3] == [40, 40, 40] and toks[3:] == [EOS, EOS]


def test_logit_bias_is_clamped(normal):
    # Biases are clamped to [-100, 100] (OpenAI's range), so no bias overflows a logit to inf.
    llm = _llm(normal.path)
    a = _tokens(llm, [5, 6, 7], max_tokens=4, ignore_eos=True, temperature=0, logit_bias={40: 1e38, 41: 1e38})
    b = _tokens(llm, [5, 6, 7], max_tokens=4, ignore_eos=True, temperature=0, logit_bias={40: 100.0, 41: 100.0})
    assert a == b and set(a) <= {40, 41}
    with pytest.raises(ValueError, match="not finite"):
        _tokens(llm, [5, 6, 7], max_tokens=1, logit_bias={40: math.nan})


def test_device_sampling_emulation_on_nan_logits(nan_rows, all_nan, monkeypatch):
    # The CPU emulation of the CUDA sampler (greedy) treats NaN as impossible too.
    monkeypatch.setenv("CSERVE_CPU_EMULATE_DEVICE_SAMPLING", "1")
    toks = _tokens(_llm(nan_rows.path), [5, 6, 7, 8], max_tokens=8, ignore_eos=True, temperature=0)
    assert len(toks) == 8 and all(0 <= t < 100 for t in toks)
    assert _tokens(_llm(all_nan.path), [5, 6, 7], max_tokens=3, ignore_eos=True, temperature=0) == [0, 0, 0]
    # Masks under the emulation: min_tokens with ignore_eos still masks EOS.
    toks = _tokens(_llm(nan_rows.path), [5, 6, 7], max_tokens=4, min_tokens=2, ignore_eos=True, temperature=0,
                   allowed_token_ids=[EOS, 40], logit_bias={EOS: 100.0})
    assert toks == [40, 40, EOS, EOS]


def test_long_prompt_logprobs_over_several_steps(model_zoo):
    """Prompt logprobs come from at most 512 prompt tokens per step; a 1300-token prompt takes
    several steps and still matches transformers at every position."""
    import numpy as np

    from tests.helpers.models import SPECS, check_prompt_logprobs, greedy, make_llm, random_prompt

    spec = {k: v for k, v in SPECS["llama"].items() if k != "model_type"}
    built = model_zoo.custom("llama_2k", "llama", max_position_embeddings=2048, **spec)
    prompt = random_prompt(np.random.default_rng(3), 1300, built.vocab_size)
    llm = make_llm(built.path, max_model_len=2048, num_gpu_blocks_override=200)
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=1, prompt_logprobs=2), use_tqdm=False)
    check_prompt_logprobs(out, built.logprobs(prompt))
    assert llm.engine.stats().num_steps >= 3
