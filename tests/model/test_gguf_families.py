"""Gemma 1/2/3, the mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE), Phi-3 (longrope, partial
rotary), Granite, OLMo 2 and SmolLM3 from GGUF files written as llama.cpp's converter writes them
(tests/helpers/gguf_files.py), against transformers running the weights each file holds
(dequantized): prompt logprobs, and the greedy continuation in F32."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q

from tests.helpers.gguf_files import write_family_gguf
from tests.helpers.models import (
    SPECS,
    check_prompt_logprobs,
    greedy,
    hf_logprobs,
    make_llm,
)

# llama.cpp derives some Gemma settings rather than reading them: the attention scale is
# 1/sqrt(head_dim) (query_pre_attn_scalar 16), Gemma 3 slides on five layers of six with RoPE base
# 10000 there; SmolLM3 skips RoPE on every 4th layer and has no window. The zoo's models are changed
# to those values so the files mean the same model.
_GEMMA3_LAYERS = ["sliding_attention"] * 5 + ["full_attention"]
AS_LLAMA_CPP = {
    "gemma": {},
    "gemma2": {"query_pre_attn_scalar": 16},
    "gemma3": {"num_hidden_layers": 6, "query_pre_attn_scalar": 16, "layer_types": _GEMMA3_LAYERS,
               "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                   "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0}}},
    "mixtral": {},
    "qwen2_moe": {"mlp_only_layers": []},  # the converter has no names for dense layers in qwen2moe
    "qwen3_moe": {},
    "phi3": {},  # longrope (short factors here), a window of 12 that the 30-token prompt crosses
    "phi3_long": {},  # partial rotary 0.5, longrope from 32 positions: see test_phi3_long_factors
    "granite": {},  # all four multipliers, q/k/v/o and MLP biases
    "olmo2": {},
    "smollm3": {"no_rope_layer_interval": 4, "use_sliding_window": False, "sliding_window": None},
}
FAMILIES = list(AS_LLAMA_CPP)


def _model(model_zoo, family):
    if not AS_LLAMA_CPP[family]:
        return model_zoo.get(family)
    spec = dict(SPECS[family])
    model_type = spec.pop("model_type")
    spec.update(AS_LLAMA_CPP[family])
    return model_zoo.custom(f"{family}_as_llama_cpp", model_type, **spec)


def _write(built, path, qtype):
    """The GGUF file, and a transformers copy of the model holding exactly its weights."""
    import torch

    ref = copy.deepcopy(built.model)
    stored = write_family_gguf(ref, path, qtype)
    with torch.no_grad():
        state = ref.state_dict()
        assert not set(state) - set(stored) - {"lm_head.weight"}, "the file lacks weights"  # lm_head: tied
        for name, value in stored.items():
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return ref


def _check_quantized(out, ref):
    """Quantized weights: the CPU rounds activations to int8 per block of 32 (as llama.cpp does),
    about 1% of a logit, and these tiny random models' logprobs reach -60 (Gemma's scaled
    embedding): the tolerance grows with the logprob. A weight read wrongly (another expert's
    slab, a norm without its offset) costs whole units."""
    ids = out.prompt_token_ids
    got = np.array([out.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))])
    want = np.array([ref[i - 1, ids[i]] for i in range(1, len(ids))])
    err = np.abs(got - want)
    assert (err <= 0.3 + 0.05 * np.abs(want)).all(), f"max |diff| {err.max()} at logprob {want[err.argmax()]}"
    rel = err / np.maximum(1.0, np.abs(want))
    assert rel.mean() <= 0.02, f"mean relative |diff| {rel.mean()}"


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=["F32", "Q8_0"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_matches_transformers(model_zoo, tmp_path, family, qtype):
    built = _model(model_zoo, family)
    path = tmp_path / f"{family}-{qtype.name}.gguf"
    ref = _write(built, path, qtype)
    prompt = [int(t) for t in np.random.default_rng(7).integers(3, built.vocab_size, size=30)]
    llm = make_llm(str(path), skip_tokenizer_init=True)
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(max_tokens=6), use_tqdm=False)[0]
    if qtype != Q.F32:
        _check_quantized(out, hf_logprobs(ref, prompt))
    else:  # exact weights: transformers' logprobs, and its greedy continuation
        check_prompt_logprobs(out, hf_logprobs(ref, prompt))
        # Past longrope's threshold transformers re-rotates the whole cache, cserve only new keys.
        threshold = getattr(built.model.config, "original_max_position_embeddings", None) or len(prompt) + 6
        ids = list(prompt)
        for tok in out.outputs[0].token_ids:
            if len(ids) > threshold:
                break
            assert tok == int(hf_logprobs(ref, ids)[-1].argmax())
            ids.append(tok)


@pytest.mark.parametrize("qtype", [Q.F32, Q.Q8_0], ids=["F32", "Q8_0"])
def test_phi3_long_factors(model_zoo, tmp_path, qtype):
    """A prompt longer than original_max_position_embeddings (32) runs on the long factors read
    from rope_factors_long, as transformers does, with the converter's attn_factor."""
    built = _model(model_zoo, "phi3_long")
    path = tmp_path / f"phi3_long-{qtype.name}.gguf"
    ref = _write(built, path, qtype)
    prompt = [int(t) for t in np.random.default_rng(11).integers(3, built.vocab_size, size=48)]
    out = make_llm(str(path), skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": prompt}], greedy(max_tokens=1), use_tqdm=False)[0]
    if qtype != Q.F32:
        _check_quantized(out, hf_logprobs(ref, prompt))
    else:
        check_prompt_logprobs(out, hf_logprobs(ref, prompt))


def test_phi3_end_of_turn_stops(model_zoo, tmp_path):
    """Phi-3 files name <|endoftext|> as the EOS, yet every turn ends with <|end|>: it stops
    generation too, as in llama.cpp."""
    built = _model(model_zoo, "phi3")
    path = tmp_path / "phi3-tokens.gguf"
    tokens = [f"t{i}" for i in range(built.vocab_size)]
    tokens[200] = "<|end|>"
    write_family_gguf(copy.deepcopy(built.model), path, Q.F32, tokens=tokens)
    llm = make_llm(str(path), skip_tokenizer_init=True)
    assert set(llm.model_info.eos_token_ids) == {built.model.config.eos_token_id, 200}


def test_q4_0_experts(model_zoo, tmp_path):
    """4-bit experts: each expert's rows are a slab of the layer's Q4_0 3D tensor."""
    built = _model(model_zoo, "qwen3_moe")
    path = tmp_path / "qwen3_moe-Q4_0.gguf"
    ref = _write(built, path, Q.Q4_0)
    prompt = [int(t) for t in np.random.default_rng(8).integers(3, built.vocab_size, size=30)]
    out = make_llm(str(path), skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": prompt}], greedy(max_tokens=1), use_tqdm=False)[0]
    _check_quantized(out, hf_logprobs(ref, prompt))


@pytest.mark.parametrize("family", ["qwen2_moe", "mixtral", "phi3", "granite"])
def test_tensor_parallel(model_zoo, tmp_path, family):
    """-tp 2 on a GGUF: every expert's slab split between the ranks as a dense MLP is, Phi-3's
    heads and gate / up rows out of its fused tensors, Granite's permuted q/k biases with their rows."""
    from cserve import _core

    built = _model(model_zoo, family)
    path = tmp_path / f"{family}.gguf"
    ref = _write(built, path, Q.F32)
    prompt = [int(t) for t in np.random.default_rng(9).integers(3, built.vocab_size, size=24)]
    group = f"cserve-test-gguf-{family}-{os.getpid()}"
    got = np.asarray(_core.testing.tensor_parallel_logits(str(path), 2, prompt, group))
    import torch

    with torch.no_grad():
        want = ref(torch.tensor([prompt])).logits[0].numpy()
    np.testing.assert_allclose(got.reshape(len(prompt), -1), want, atol=2e-3, rtol=0)


def test_norm_offset_and_names_come_from_the_file(model_zoo, tmp_path):
    """The same Gemma 2 weights: the GGUF file (norms stored as 1 + w, llama.cpp's norm names) and
    the safetensors directory (w, transformers' names) give the same logprobs."""
    built = _model(model_zoo, "gemma2")
    path = tmp_path / "gemma2.gguf"
    _write(built, path, Q.F32)
    prompt = [int(t) for t in np.random.default_rng(10).integers(3, built.vocab_size, size=20)]
    outs = [make_llm(p, skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": prompt}], greedy(max_tokens=1), use_tqdm=False)[0] for p in (str(path), built.path)]
    got = [np.array([o.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))]) for o in outs]
    np.testing.assert_allclose(got[0], got[1], atol=1e-4)


@pytest.mark.parametrize("family, key, value, message", [
    ("qwen3_moe", "qwen3moe.expert_gating_func", 2, "expert_gating_func 2 is not supported"),
    ("qwen3_moe", "qwen3moe.expert_weights_scale", 2.5, "expert_weights_scale 2.5.* is not supported"),
    ("olmo2", "olmo2.attention.sliding_window", 8, "olmo2 files with attention.sliding_window .OLMo 3. are not"),
])
def test_unsupported_settings_are_refused(model_zoo, tmp_path, family, key, value, message):
    """Settings llama.cpp offers that cserve does not run are refused by name, not ignored."""
    from cserve import _core

    path = tmp_path / "refused.gguf"
    write_family_gguf(copy.deepcopy(_model(model_zoo, family).model), path, Q.F32, fields={key: value})
    config = _core.EngineConfig()
    config.model = str(path)
    with pytest.raises(NotImplementedError, match=message):
        _core.Engine(config)
