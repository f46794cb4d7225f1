"""The CUDA backend end to end (skipped without a GPU). The model-level parity suite
(tests/model/test_parity.py, test_dtypes.py) runs on the GPU too with CSERVE_TEST_DEVICE=cuda
(benchmarks/gpu_check.sh does both); this file holds what only a GPU has: bf16 against the
CPU backend, memory sizing from the device, and the dummy loader at large shapes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cserve import _core
from tests.helpers.models import assert_same_completions, greedy, make_llm, random_prompt

if _core.resolve_device("auto")[0] != "cuda":
    pytest.skip("no CUDA device (or no CUDA backend) here: " + _core.resolve_device("auto")[1],
                allow_module_level=True)


def _prompt_logprobs(llm, prompt):
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
    return np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_bfloat16_matches_the_cpu_backend(model_zoo, family):
    built = model_zoo.get(family)
    prompt = random_prompt(np.random.default_rng(7), 60, built.vocab_size)
    gpu = _prompt_logprobs(make_llm(built.path, dtype="bfloat16", device="cuda"), prompt)
    cpu = _prompt_logprobs(make_llm(built.path, dtype="bfloat16", device="cpu"), prompt)
    # Both round GEMM inputs to bf16 and accumulate in f32; only summation orders differ.
    assert np.abs(gpu - cpu).max() < 0.05


def test_engine_names_the_gpu(model_zoo):
    llm = make_llm(model_zoo.get("llama").path, device="cuda")
    assert llm.model_info.backend.startswith("cuda:0 (")
    assert make_llm(model_zoo.get("llama").path, device="auto").model_info.backend == llm.model_info.backend


def test_kv_cache_is_sized_from_the_device(model_zoo):
    torch = pytest.importorskip("torch")
    total = torch.cuda.get_device_properties(0).total_memory
    path = model_zoo.get("llama").path
    small = make_llm(path, device="cuda", gpu_memory_utilization=0.3, max_model_len=256)
    # vLLM's meaning, per instance: a fraction of the device's total memory, less what this
    # engine uses besides the cache (tiny here). The first engine stays alive while the second
    # starts: its memory is not charged to the second.
    large = make_llm(path, device="cuda", gpu_memory_utilization=0.5, max_model_len=256)
    assert small.model_info.kv_cache_bytes <= 0.3 * total
    grown = large.model_info.kv_cache_bytes - small.model_info.kv_cache_bytes
    assert grown == pytest.approx(0.2 * total, rel=0.05)
    fixed = make_llm(path, device="cuda", num_gpu_blocks_override=40).model_info
    assert fixed.num_kv_blocks == 40


def test_dummy_weights_at_llama_scale(tmp_path):
    """A Llama-shaped config with load_format dummy: random weights straight to the GPU, and a
    batch of greedy requests runs (no NaN logprobs) with the KV cache sized from the device."""
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=2048, intermediate_size=5632,
               num_hidden_layers=4, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="bfloat16",
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from cserve import LLM, SamplingParams

    llm = LLM(str(tmp_path), load_format="dummy", dtype="bfloat16", device="cuda", skip_tokenizer_init=True,
              gpu_memory_utilization=0.5)
    prompts = [{"prompt_token_ids": random_prompt(np.random.default_rng(i), 100 + 13 * i, 32000)} for i in range(16)]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=0),
                        use_tqdm=False)
    for out in outs:
        c = out.outputs[0]
        assert len(c.token_ids) == 24
        assert all(np.isfinite(lp[t].logprob) for lp, t in zip(c.logprobs, c.token_ids))


def test_sampling_on_the_gpu_matches_the_cpu_sampler(model_zoo):
    """Decode steps without penalties or processors sample on the GPU (only ids and logprobs
    come back): greedy tokens, raw logprobs, ranks and top-5 as the CPU sampler gives them."""
    from cserve import SamplingParams

    built = model_zoo.get("llama")
    prompts = [{"prompt_token_ids": random_prompt(np.random.default_rng(s), 20, built.vocab_size)} for s in range(4)]
    sp = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, logprobs=5)
    gpu = make_llm(built.path, device="cuda").generate(prompts, sp, use_tqdm=False)
    cpu = make_llm(built.path, device="cpu").generate(prompts, sp, use_tqdm=False)
    assert_same_completions(cpu, gpu, tol=1e-3, ranks=True)


def test_seeded_sampling_on_the_gpu_ignores_the_batch(model_zoo):
    from cserve import SamplingParams

    built = model_zoo.get("llama")
    llm = make_llm(built.path, device="cuda")
    prompt = {"prompt_token_ids": random_prompt(np.random.default_rng(1), 12, built.vocab_size)}
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=42, max_tokens=16, ignore_eos=True)
    alone = llm.generate([prompt], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = [{"prompt_token_ids": random_prompt(np.random.default_rng(9 + i), 30, built.vocab_size)} for i in range(5)]
    batch = llm.generate([*others, prompt], [SamplingParams(temperature=1.0, max_tokens=16)] * 5 + [seeded],
                         use_tqdm=False)
    assert batch[-1].outputs[0].token_ids == alone


def test_cuda_graphs_give_the_eager_tokens(model_zoo):
    """Decode steps replayed from CUDA graphs (padded to the captured sizes) produce what the
    same engine produces eagerly: requests of different lengths make every batch size occur."""
    built = model_zoo.get("qwen2")
    prompts = [{"prompt_token_ids": random_prompt(np.random.default_rng(i), 5 + 7 * i, built.vocab_size)}
               for i in range(12)]
    from cserve import SamplingParams

    params = [SamplingParams(temperature=0, max_tokens=6 + 2 * i, ignore_eos=True, logprobs=2) for i in range(12)]
    eager_llm = make_llm(built.path, device="cuda", enforce_eager=True)
    assert eager_llm.model_info.num_cuda_graphs == 0
    graph_llm = make_llm(built.path, device="cuda", cudagraph_capture_sizes=[1, 2, 4, 8, 16])
    assert graph_llm.model_info.num_cuda_graphs == 5
    eager = eager_llm.generate(prompts, params, use_tqdm=False)
    graphs = graph_llm.generate(prompts, params, use_tqdm=False)
    assert_same_completions(eager, graphs, tol=1e-4)


def test_default_graph_sizes_follow_max_num_seqs(model_zoo):
    llm = make_llm(model_zoo.get("llama").path, device="cuda", max_num_seqs=20)
    # [1, 2, 4, 8, 16, 24]: 24 is the first size that holds 20 requests.
    assert llm.model_info.num_cuda_graphs == 6


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2", "bfloat16"])
def test_kv_cache_dtypes(model_zoo, kv_cache_dtype):
    """An fp8 (or bf16) KV cache under f32 compute: the cache takes 1 (or 2) bytes a value, and
    the prompt logprobs stay near those of the f32 cache (fp8 keeps 2-3 mantissa bits)."""
    built = model_zoo.get("llama")
    prompt = random_prompt(np.random.default_rng(3), 40, built.vocab_size)
    ref_llm = make_llm(built.path, device="cuda", num_gpu_blocks_override=64)
    llm = make_llm(built.path, device="cuda", num_gpu_blocks_override=64, kv_cache_dtype=kv_cache_dtype)
    size = 2 if kv_cache_dtype == "bfloat16" else 1
    # One spare block for CUDA graph padding on both.
    assert llm.model_info.kv_cache_bytes * 4 == ref_llm.model_info.kv_cache_bytes * size
    err = np.abs(_prompt_logprobs(llm, prompt) - _prompt_logprobs(ref_llm, prompt))
    assert err.max() < (0.05 if kv_cache_dtype == "bfloat16" else 0.5), err.max()


@pytest.mark.parametrize("kw", [
    dict(repetition_penalty=1.3),
    dict(frequency_penalty=0.7, presence_penalty=0.4),
    dict(logit_bias={5: 3.0, 17: -2.0}),
    dict(allowed_token_ids=[3, 8, 9, 40, 41, 100]),
    dict(min_tokens=6, stop_token_ids=[7]),
])
def test_processors_and_penalties_on_the_gpu(model_zoo, kw):
    """Penalties and logits processors applied by the GPU sampler: the greedy tokens and raw
    logprobs the CPU sampler gives."""
    from cserve import SamplingParams

    built = model_zoo.get("llama")
    prompts = [{"prompt_token_ids": random_prompt(np.random.default_rng(20 + s), 15, built.vocab_size)}
               for s in range(3)]
    sp = SamplingParams(temperature=0, max_tokens=12, logprobs=3, **kw)
    gpu = make_llm(built.path, device="cuda").generate(prompts, sp, use_tqdm=False)
    cpu = make_llm(built.path, device="cpu").generate(prompts, sp, use_tqdm=False)
    assert_same_completions(cpu, gpu, tol=1e-3)
