"""SmolLM2-135M-Instruct's Q4_1 GGUF run with its weights kept 4-bit, against transformers on
the same weights dequantized (the float32 directory the tests build from that GGUF)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.models import hf_logprobs

CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def hf(smollm2_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(smollm2_model_dir, dtype=torch.float32).eval()


def test_quantized_model_tracks_transformers(smollm2_gguf, hf):
    from cserve import LLM, SamplingParams

    llm = LLM(str(smollm2_gguf), max_model_len=512, num_threads=2, kv_cache_memory_bytes=1 << 26)
    tok = llm.get_tokenizer()
    prompt = tok.encode(CHAT, add_special_tokens=False).ids
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, prompt_logprobs=0)
    out = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0]
    ids = prompt + out.outputs[0].token_ids
    ref = hf_logprobs(hf, ids)
    got = np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])
    want = np.array([ref[i - 1, prompt[i]] for i in range(1, len(prompt))])
    # 4-bit weights are exact here; the error is int8 rounding of the activations.
    # ~0.06 and ~0.3 with VNNI, ~0.1 and ~0.7 on AVX2: int8 rounding; a wrong weight costs nats
    assert np.abs(got - want).mean() < 0.15 and np.abs(got - want).max() < 1.0
    # Each greedy token is (nearly) transformers' best at its position.
    for pos in range(len(prompt), len(ids)):
        row = ref[pos - 1]
        assert row.max() - row[ids[pos]] < 0.3, (pos, row.max() - row[ids[pos]])
    assert "sea" in out.outputs[0].text.lower() or "wave" in out.outputs[0].text.lower()
    assert llm.engine.model_info().weight_bytes < 120 * 2**20  # 4-bit, not 270 MB of bf16
