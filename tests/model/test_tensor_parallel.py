"""Tensor parallelism's split of the model (model/tensor_parallel, the sharded loader and
forward): N ranks as threads of this process, each with its own shard, KV cache and CPU backend,
meeting in the shared-memory communicator. Rank 0's logits of a prefill and a decode step equal
the unsplit model's, for every tiny family (GQA with fewer KV heads than ranks, MQA, q/k/v bias,
q/k norm, tied embeddings, a sliding window, Granite's multipliers, SmolLM3's NoPE layers, Phi-3's fused
q/k/v and gate/up rows sliced per rank, its long RoPE factors) and for
SmolLM2's GGUF split three ways. OLMo 2 is refused under -tp (test_families_more.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import _core

# (family, tensor parallel sizes): every size that divides the family's heads and MLP width.
CASES = [("llama", 2), ("llama", 4), ("llama_tied", 2), ("mistral", 2), ("mistral", 4), ("qwen2", 2),
         ("qwen2", 4), ("qwen3", 2), ("granite", 2), ("smollm3", 2), ("phi3", 2), ("phi3_long", 2)]


def _logits(path: str, tp: int, prompt: list[int]) -> np.ndarray:
    group = f"cserve-test-tp-{os.getpid()}-{tp}-{abs(hash((path, tuple(prompt)))) % 10**8}"
    return np.asarray(_core.testing.tensor_parallel_logits(path, tp, prompt, group))


@pytest.mark.parametrize("family,tp", CASES, ids=[f"{f}-tp{t}" for f, t in CASES])
def test_split_model_equals_whole(model_zoo, family, tp):
    built = model_zoo.get(family)
    rng = np.random.default_rng(7)
    prompt = [int(t) for t in rng.integers(3, built.vocab_size, size=21)]
    whole = _logits(built.path, 1, prompt).reshape(len(prompt), -1)
    split = _logits(built.path, tp, prompt).reshape(len(prompt), -1)
    np.testing.assert_allclose(split, whole, atol=1e-4, rtol=0)
    assert (split.argmax(-1) == whole.argmax(-1)).all()


def test_smollm2_gguf_split_three_ways(smollm2_gguf, smollm2_model_dir):
    """9 attention heads and 3 KV heads: -tp 3. The quantized rows of the row-parallel o and down
    are split on block boundaries, never inside a block, so the 4-bit weights are exact on every
    rank; what differs from -tp 1 is the int8 rounding of activations that the all-reduce's
    summation order moves by an ulp. Both track transformers on the dequantized weights alike."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.helpers.models import hf_logprobs

    prompt = [1, 504, 3458, 282, 253, 1789, 28, 47, 4299, 30, 2771, 281, 260, 3102, 30]
    hf = AutoModelForCausalLM.from_pretrained(smollm2_model_dir, dtype=torch.float32).eval()
    ref = hf_logprobs(hf, prompt)
    want = np.array([ref[i - 1, prompt[i]] for i in range(1, len(prompt))])
    for tp in (1, 3):
        logits = _logits(str(smollm2_gguf), tp, prompt).reshape(len(prompt), -1)
        lp = logits - logits.max(-1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
        got = np.array([lp[i - 1, prompt[i]] for i in range(1, len(prompt))])
        # the bounds of test_smollm2_gguf.py (int8 activation rounding; a wrong weight costs nats)
        assert np.abs(got - want).mean() < 0.15 and np.abs(got - want).max() < 1.0, tp


def test_sizes_that_do_not_divide_are_refused_with_vllms_message(model_zoo):
    built = model_zoo.get("llama")  # 8 heads
    with pytest.raises(ValueError, match=r"Total number of attention heads \(8\) must be divisible by tensor "
                                         r"parallel size \(3\)"):
        _logits(built.path, 3, [5, 6, 7])



def _stage_logits(path: str, pp: int, prompt: list[int]) -> np.ndarray:
    group = f"cserve-test-pp-{os.getpid()}-{pp}-{abs(hash((path, tuple(prompt)))) % 10**8}"
    return np.asarray(_core.testing.tensor_parallel_logits(path, 1, prompt, group, pp=pp))


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3", "phi3_long"])
def test_pipeline_stages_equal_the_whole_model(model_zoo, family):
    """-pp 2: each stage its layers (the first embeds, the last normalizes and computes the
    logits), the hidden states handed over between them."""
    built = model_zoo.get(family)
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, built.vocab_size, size=19)]
    whole = _logits(built.path, 1, prompt)
    np.testing.assert_allclose(_stage_logits(built.path, 2, prompt), whole, atol=1e-5, rtol=0)


def test_uneven_pipeline_stages(model_zoo):
    """5 layers on 3 stages (2, 2, 1), tied embeddings on both ends."""
    built = model_zoo.custom("llama_5_layers", "llama", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                             num_key_value_heads=2, num_hidden_layers=5, tie_word_embeddings=True)
    prompt = [5, 9, 200, 31, 77, 4, 8, 15, 16, 23, 42]
    np.testing.assert_allclose(_stage_logits(built.path, 3, prompt), _logits(built.path, 1, prompt), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"fewer than pipeline parallel size \(6\)"):
        _stage_logits(built.path, 6, prompt)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tensor_parallel_stages(model_zoo, family):
    """-tp 2 -pp 2: four ranks, two stages of two; each stage all-reduces among its own ranks and
    hands over to the same tensor rank of the next stage."""
    built = model_zoo.get(family)
    prompt = [int(t) for t in np.random.default_rng(5).integers(3, built.vocab_size, size=17)]
    group = f"cserve-test-tppp-{os.getpid()}-{family}"
    both = np.asarray(_core.testing.tensor_parallel_logits(built.path, 2, prompt, group, pp=2))
    np.testing.assert_allclose(both, _logits(built.path, 1, prompt), atol=1e-4, rtol=0)
