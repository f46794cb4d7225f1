"""The runner's CUDA-graph path (decode steps padded to a captured size, padding tokens in a
spare KV block, block tables of max_model_len width, the real rows' logits first), run on the
CPU through the backend's graph emulation (CSERVE_CPU_EMULATE_GRAPHS=1): the tokens and
logprobs must be exactly those of the plain path."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import SamplingParams
from tests.helpers.models import assert_same_completions, make_llm, random_prompt


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setenv("CSERVE_CPU_EMULATE_GRAPHS", "1")


def _run(path, **options):
    llm = make_llm(path, device="cpu", **options)
    rng = np.random.default_rng(5)
    vocab = llm.model_info.vocab_size
    prompts = [{"prompt_token_ids": random_prompt(rng, 3 + 9 * i, vocab)} for i in range(11)]
    # Different lengths: the decode batch shrinks through many sizes; a seeded sampled request too.
    params = [SamplingParams(temperature=0, max_tokens=4 + 3 * i, ignore_eos=True, logprobs=2) for i in range(10)]
    params.append(SamplingParams(temperature=0.8, top_k=20, seed=3, max_tokens=20, ignore_eos=True, logprobs=1))
    return llm, llm.generate(prompts, params, use_tqdm=False)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen3"])
def test_padded_decode_matches_the_plain_path(model_zoo, family, monkeypatch):
    path = model_zoo.get(family).path
    plain_llm, plain = _run(path)
    assert plain_llm.model_info.num_cuda_graphs == 0
    monkeypatch.setenv("CSERVE_CPU_EMULATE_GRAPHS", "1")
    graph_llm, graphs = _run(path, cudagraph_capture_sizes=[1, 2, 4, 8, 16], max_num_seqs=16)
    assert graph_llm.model_info.num_cuda_graphs == 5
    assert_same_completions(plain, graphs, tol=1e-5)


def test_emulation_honours_enforce_eager(model_zoo, emulated):
    llm = make_llm(model_zoo.get("llama").path, device="cpu", enforce_eager=True)
    assert llm.model_info.num_cuda_graphs == 0
