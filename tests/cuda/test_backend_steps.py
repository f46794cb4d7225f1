"""CUDA backend steps that the CPU cannot show (skipped without a GPU): the sampler's buffers
are part of the memory profile, and mixed prefill/decode batches (decode tokens beside prefill
tiles, per-head q/k norms in one launch, host inputs through the pinned upload ring) give the
CPU backend's tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cserve import _core
from tests.helpers.models import assert_same_completions, make_llm, random_prompt

if _core.resolve_device("auto")[0] != "cuda":
    pytest.skip("no CUDA device (or no CUDA backend) here: " + _core.resolve_device("auto")[1],
                allow_module_level=True)
cuda = pytest.importorskip("cserve._cuda", reason="cserve was built without CUDA")


def test_sampling_buffers_are_in_the_memory_profile(tmp_path):
    # 256 rows x 128k vocabulary: the processed copy of the logits alone is 131 MB. The profiling
    # run samples that many rows, so the first real step of that size allocates nothing more.
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=512, intermediate_size=1024,
               num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=128256,
               max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0, torch_dtype="bfloat16",
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from cserve import LLM, SamplingParams

    llm = LLM(str(tmp_path), load_format="dummy", dtype="bfloat16", device="cuda", skip_tokenizer_init=True,
              gpu_memory_utilization=0.3, max_num_seqs=256, max_model_len=256, enforce_eager=True)
    free_before = cuda.memory_info()[0]
    prompts = [{"prompt_token_ids": random_prompt(np.random.default_rng(i), 8, 128256)} for i in range(256)]
    sp = SamplingParams(temperature=1.0, top_k=50, max_tokens=3, ignore_eos=True, logprobs=5, logit_bias={7: 1.0})
    outs = llm.generate(prompts, sp, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 3 for o in outs)
    assert free_before - cuda.memory_info()[0] < 64 << 20


@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_mixed_batches_match_the_cpu_backend(model_zoo, family):
    # Small token budgets chunk the long prompts while the short ones decode beside them.
    built = model_zoo.get(family)
    prompts = [{"prompt_token_ids": random_prompt(np.random.default_rng(i), 6 + 37 * (i % 5), built.vocab_size)}
               for i in range(12)]
    from cserve import SamplingParams

    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3)
    options = dict(max_num_batched_tokens=40, max_num_seqs=8, enable_prefix_caching=False)
    gpu = make_llm(built.path, device="cuda", **options).generate(prompts, sp, use_tqdm=False)
    cpu = make_llm(built.path, device="cpu", **options).generate(prompts, sp, use_tqdm=False)
    assert_same_completions(cpu, gpu, tol=1e-3)
