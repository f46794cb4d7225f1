"""Reduced-precision compute (bfloat16, float16) stays close to float32; half-precision
checkpoints load exactly."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import SamplingParams
from tests.helpers.models import BuiltModel, check_request, greedy, make_llm, random_prompt


def _prompt_lps(out):
    ids = out.prompt_token_ids
    return np.array([out.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "mistral"])
def test_half_precision_close_to_float32(model_zoo, family, dtype):
    built = model_zoo.get(family)
    rng = np.random.default_rng(21)
    prompts = [random_prompt(rng, n, built.vocab_size) for n in (33, 8)]
    llm = make_llm(built.path, dtype=dtype)
    assert llm.model_info.dtype == dtype
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(max_tokens=8))
    for out in outs:
        ref = built.logprobs(out.prompt_token_ids + out.outputs[0].token_ids)
        want = np.array([ref[i - 1, t] for i, t in enumerate(out.prompt_token_ids) if i > 0])
        err = np.abs(_prompt_lps(out) - want)
        # bf16 keeps 8 mantissa bits, f16 11: logprobs move by hundredths / thousandths.
        mean_tol, max_tol = (0.06, 0.3) if dtype == "bfloat16" else (0.01, 0.05)
        assert err.mean() < mean_tol, err
        assert err.max() < max_tol, err
        # The sampled tokens are transformers' top choices up to that noise.
        P = len(out.prompt_token_ids)
        for j, t in enumerate(out.outputs[0].token_ids):
            row = ref[P - 1 + j]
            assert row[t] >= row.max() - 2 * max_tol
            assert abs(out.outputs[0].logprobs[j][t].logprob - row[t]) < 2 * max_tol


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoint_loads_exactly(model_zoo, tmp_path, dtype):
    """A bf16/f16 checkpoint computed in float32 equals transformers on the same (rounded) weights."""
    import torch

    built = model_zoo.get("llama")
    tdtype = getattr(torch, dtype)
    half = type(built.model)(built.model.config).to(tdtype)
    half.load_state_dict({k: v.to(tdtype) for k, v in built.model.state_dict().items()})
    half.save_pretrained(str(tmp_path), safe_serialization=True)
    # A fresh float32 model with the rounded weights (casting `half` back would also round its rope buffers).
    ref_model = type(built.model)(built.model.config).eval()
    ref_model.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    import json

    ref = BuiltModel(name="half", path=str(tmp_path), model=ref_model,
                     config=json.loads((tmp_path / "config.json").read_text()))
    prompt = random_prompt(np.random.default_rng(22), 30, built.vocab_size)
    (out,) = make_llm(str(tmp_path), dtype="float32").generate({"prompt_token_ids": prompt}, greedy(max_tokens=8))
    check_request(ref, out)
    # In its own dtype ("auto" follows a float16 checkpoint) it runs and stays close.
    llm = make_llm(str(tmp_path), dtype="auto" if dtype == "float16" else dtype)
    assert llm.model_info.dtype == dtype
    (low,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=8))
    assert np.abs(_prompt_lps(low) - _prompt_lps(out)).mean() < 0.05


def test_bfloat16_sampling_runs(model_zoo):
    built = model_zoo.get("qwen2")
    llm = make_llm(built.path, dtype="bfloat16")
    outs = llm.generate([{"prompt_token_ids": [5, 6, 7, 8]}] * 4,
                        SamplingParams(temperature=0.8, top_p=0.9, max_tokens=10, seed=3, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 10 for o in outs)
    assert all(0 <= t < built.vocab_size for o in outs for t in o.outputs[0].token_ids)
