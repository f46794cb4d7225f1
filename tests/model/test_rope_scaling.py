"""RoPE scaling variants (linear, dynamic NTK, llama3, yarn) against transformers."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tests.helpers.models import TOL, check_greedy, check_prompt_logprobs, check_request, greedy, make_llm, random_prompt

# head_dim 32 so that the scaled bands (llama3, yarn) cover several frequencies.
BASE = dict(hidden_size=64, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
            tie_word_embeddings=False)

CASES = {
    "linear": ("llama", dict(max_position_embeddings=64,
                             rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})),
    "llama3": ("llama", dict(max_position_embeddings=64,
                             rope_parameters={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                              "rope_theta": 10000.0})),
    "yarn": ("llama", dict(max_position_embeddings=64,
                           rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                                            "rope_theta": 10000.0})),
    "yarn_mscale": ("qwen3", dict(max_position_embeddings=64, head_dim=64,
                                  rope_parameters={"rope_type": "yarn", "factor": 2.0, "beta_fast": 16.0,
                                                   "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.5,
                                                   "original_max_position_embeddings": 32, "rope_theta": 500.0})),
    "theta": ("qwen2", dict(max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 50.0})),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rope_scaling_matches_transformers(model_zoo, case):
    model_type, overrides = CASES[case]
    built = model_zoo.custom(f"rope_{case}", model_type, **{**BASE, **overrides})
    llm = make_llm(built.path, max_model_len=60)
    rng = np.random.default_rng(11)
    # Prompts past the original context so that the scaled frequencies matter; a short one too.
    prompts = [random_prompt(rng, 40, built.vocab_size), random_prompt(rng, 6, built.vocab_size)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(max_tokens=12))
    for out in outs:
        check_request(built, out)


def test_rope_scaling_changes_the_result(model_zoo):
    """The scaled model differs from the same weights without scaling (the test above is not vacuous)."""
    import json
    import shutil
    from pathlib import Path

    built = model_zoo.custom("rope_llama3", "llama", **{**BASE, **CASES["llama3"][1]})
    plain_dir = Path(built.path).parent / "rope_llama3_plain"
    if not plain_dir.exists():
        shutil.copytree(built.path, plain_dir)
        cfg = dict(built.config)
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        (plain_dir / "config.json").write_text(json.dumps(cfg))
    prompt = random_prompt(np.random.default_rng(12), 40, built.vocab_size)
    (a,) = make_llm(built.path, max_model_len=60).generate({"prompt_token_ids": prompt}, greedy(max_tokens=2))
    (b,) = make_llm(str(plain_dir), max_model_len=60).generate({"prompt_token_ids": prompt}, greedy(max_tokens=2))
    la = np.array([a.prompt_logprobs[i][prompt[i]].logprob for i in range(1, 40)])
    lb = np.array([b.prompt_logprobs[i][prompt[i]].logprob for i in range(1, 40)])
    assert np.abs(la - lb).max() > 1e-2


def test_dynamic_ntk(model_zoo):
    """Dynamic NTK rescales the base once the sequence passes max_position_embeddings. transformers
    recomputes it per forward call from the longest position, so the prompt (one chunk) matches a full
    forward and each decode step matches transformers' incremental decoding with its KV cache."""
    import torch
    from transformers import AutoModelForCausalLM

    built = model_zoo.custom("rope_dynamic", "llama", **{**BASE, "max_position_embeddings": 32,
                                                         "rope_parameters": {"rope_type": "dynamic", "factor": 2.0,
                                                                             "rope_theta": 10000.0}})
    llm = make_llm(built.path, max_model_len=64)
    assert llm.model_info.max_model_len == 64
    rng = np.random.default_rng(13)
    for length in (40, 10):
        prompt = random_prompt(rng, length, built.vocab_size)
        (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=10))
        check_prompt_logprobs(out, built.logprobs(prompt))
        # transformers' own incremental decode, on a fresh model (the dynamic state lives in the module).
        model = AutoModelForCausalLM.from_pretrained(built.path, attn_implementation="eager", dtype=torch.float32)
        model.eval()
        # transformers 5.x renames past_key_values to cache.
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        steps = []
        with torch.no_grad():
            res = model(torch.tensor([prompt]), use_cache=True)
            steps.append(torch.log_softmax(res.logits[0, -1], -1).numpy())
            for t in out.outputs[0].token_ids[:-1]:
                past = getattr(res, "cache", None) or res.past_key_values
                res = model(torch.tensor([[t]]), use_cache=True, **{cache_kw: past})
                steps.append(torch.log_softmax(res.logits[0, -1], -1).numpy())
        ref = np.zeros((length - 1 + len(steps), built.vocab_size), dtype=np.float32)
        ref[length - 1:] = np.stack(steps)
        check_greedy(out.outputs[0], prompt, ref, TOL)
