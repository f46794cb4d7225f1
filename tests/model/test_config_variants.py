"""Config variants of the supported families against transformers: per-layer sliding windows,
biases, transformers 4.x style configs."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.models import check_request, greedy, make_llm, random_prompt, with_config

SMALL = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)


def _check(built, path=None, length=30, tokens=8, **options):
    prompt = random_prompt(np.random.default_rng(31), length, built.vocab_size)
    (out,) = make_llm(path or built.path, **options).generate({"prompt_token_ids": prompt}, greedy(tokens))
    check_request(built, out)


@pytest.mark.parametrize("name,model_type,kw", [
    ("qwen2_swa", "qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1)),
    ("qwen3_swa", "qwen3", dict(use_sliding_window=True, sliding_window=6, max_window_layers=0, head_dim=24)),
    ("mistral_layer_types", "mistral", dict(sliding_window=10, layer_types=["full_attention", "sliding_attention"])),
], ids=["qwen2-max_window_layers", "qwen3-all-layers", "mistral-layer_types"])
def test_per_layer_sliding_windows(model_zoo, tmp_path, name, model_type, kw):
    built = model_zoo.custom(name, model_type, **SMALL, **kw)
    _check(built)
    if "max_window_layers" in kw:
        # Without layer_types (older configs) the window layers follow max_window_layers.
        _check(built, with_config(built, tmp_path / "m", layer_types=None))


def test_transformers4_style_config(model_zoo, tmp_path):
    """rope_theta and rope_scaling at the top level, torch_dtype instead of dtype."""
    built = model_zoo.custom("rope_v4", "llama", **SMALL, max_position_embeddings=64,
                             rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})
    path = with_config(built, tmp_path / "m", rope_parameters=None, rope_theta=500.0,
                       rope_scaling={"type": "linear", "factor": 2.0}, dtype=None, torch_dtype="float32")
    _check(built, path, length=50, max_model_len=100)


def test_qwen2_qkv_bias_is_used(model_zoo, tmp_path):
    """Zeroing the q/k/v biases in the checkpoint changes the result: the parity of qwen2 covers them."""
    from safetensors.numpy import load_file, save_file

    built = model_zoo.get("qwen2")
    path = with_config(built, tmp_path / "m")
    t = load_file(f"{path}/model.safetensors")
    for k in t:
        if k.endswith("_proj.bias"):
            t[k] = np.zeros_like(t[k])
    save_file(t, f"{path}/model.safetensors", metadata={"format": "pt"})
    prompt = random_prompt(np.random.default_rng(32), 20, built.vocab_size)
    (a,) = make_llm(built.path).generate({"prompt_token_ids": prompt}, greedy(2))
    (b,) = make_llm(path).generate({"prompt_token_ids": prompt}, greedy(2))
    la = [a.prompt_logprobs[i][t].logprob for i, t in enumerate(prompt) if i]
    lb = [b.prompt_logprobs[i][t].logprob for i, t in enumerate(prompt) if i]
    assert np.abs(np.array(la) - np.array(lb)).max() > 1e-2


def _bias_case(model_zoo, name, model_type, **kw):
    """Either the biases are used (parity) or the checkpoint is refused; never silently wrong."""
    built = model_zoo.custom(name, model_type, **SMALL, **kw)
    try:
        llm = make_llm(built.path)
    except NotImplementedError as e:
        assert "bias" in str(e)
        return
    prompt = random_prompt(np.random.default_rng(33), 20, built.vocab_size)
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(4))
    check_request(built, out)


def test_llama_attention_bias(model_zoo):
    _bias_case(model_zoo, "llama_attn_bias", "llama", attention_bias=True)


def test_qwen3_attention_bias(model_zoo):
    _bias_case(model_zoo, "qwen3_attn_bias", "qwen3", attention_bias=True)


def test_llama_mlp_bias(model_zoo):
    _bias_case(model_zoo, "llama_mlp_bias", "llama", mlp_bias=True)


@pytest.mark.parametrize("name,model_type,kw", [
    ("llama_wide_heads", "llama", dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                       num_key_value_heads=1, head_dim=32, rms_norm_eps=1e-5,
                                       rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    ("mistral_hd40", "mistral", dict(hidden_size=48, intermediate_size=96, num_attention_heads=3,
                                     num_key_value_heads=3, head_dim=40, sliding_window=5)),
    ("qwen2_3layers", "qwen2", dict(hidden_size=96, intermediate_size=50, num_attention_heads=6,
                                    num_key_value_heads=2, num_hidden_layers=3)),
], ids=["llama-head_dim-ne-hidden/heads", "mistral-head_dim-40", "qwen2-odd-sizes"])
def test_odd_shapes(model_zoo, name, model_type, kw):
    built = model_zoo.custom(name, model_type, **kw)
    prompt = random_prompt(np.random.default_rng(34), 37, built.vocab_size)
    (out,) = make_llm(built.path, block_size=8).generate({"prompt_token_ids": prompt}, greedy(8))
    check_request(built, out)
