"""Gemma 1 / 2 / 3 beyond the shared parity tests (test_parity.py runs them with the other
families): greedy generation equal to transformers' generate(), each family option honoured (the
parity is not vacuous), configs as the Hub ships them (no layer_types, legacy RoPE keys, Gemma's
legacy hidden_act "gelu"), -tp 2 and -pp 2, and what is refused by name."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import _core
from tests.helpers.models import (check_generate, check_request, greedy, make_llm, max_prompt_logprob_error, random_prompt,
                                  seeded_prompt, with_config)

GEMMAS = ["gemma", "gemma2", "gemma3"]




@pytest.mark.parametrize("family", GEMMAS)
def test_greedy_matches_transformers_generate(model_zoo, family):
    built = model_zoo.get(family)
    check_generate(built, seeded_prompt(built, 30, seed=51))  # longer than the window of 12


GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
               "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}


@pytest.mark.parametrize("family,changes", [
    ("gemma2", dict(attn_logit_softcapping=None)),  # absent: Gemma 2's default of 50
    ("gemma2", dict(final_logit_softcapping=None)),  # absent: 30
    ("gemma2", dict(query_pre_attn_scalar=16)),
    ("gemma2", dict(layer_types=["full_attention", "full_attention"])),
    ("gemma3", dict(rope_parameters=dict(GEMMA3_ROPE, sliding_attention={"rope_type": "default",
                                                                         "rope_theta": 10000.0}))),
    ("gemma3", dict(rope_parameters=dict(GEMMA3_ROPE, full_attention={"rope_type": "default",
                                                                      "rope_theta": 10000.0}))),
    ("gemma", dict(hidden_act="silu")),
], ids=["attn-softcap", "final-softcap", "query-scalar", "layer-types", "local-rope", "global-rope", "gelu"])
def test_options_matter(model_zoo, tmp_path, family, changes):
    """With one option changed in config.json, cserve no longer matches transformers on the
    original config: each option is honoured, not ignored."""
    built = model_zoo.get(family)
    prompt = seeded_prompt(built, 40, seed=52)
    assert max_prompt_logprob_error(built, built.path, prompt) <= 1e-3
    assert max_prompt_logprob_error(built, with_config(built, tmp_path / "m", **changes), prompt) > 1e-2


def test_softcaps_bite(model_zoo):
    """The tiny Gemma 2's caps are low enough that capping changes its logits: the final cap of
    6 bounds every logit, and transformers' logits reach near it."""
    built = model_zoo.get("gemma2")
    logits = built.logits(seeded_prompt(built, 20, seed=53))
    assert 4.0 < np.abs(logits).max() <= 6.0


@pytest.mark.parametrize("family,changes", [
    # Gemma 2 as the Hub ships it: no layer_types (every other layer slides), both activation keys.
    ("gemma2", dict(layer_types=None, hidden_act="gelu_pytorch_tanh")),
    # Gemma 3's older keys: rope_theta, rope_local_base_freq, rope_scaling and sliding_window_pattern.
    ("gemma3", dict(layer_types=None, sliding_window_pattern=2, rope_parameters=None, rope_theta=10000.0,
                    rope_local_base_freq=100.0, rope_scaling={"rope_type": "linear", "factor": 4.0})),
    # Gemma's legacy "gelu" is the tanh approximation (as transformers reads it).
    ("gemma", dict(hidden_act="gelu")),
], ids=["gemma2-hub", "gemma3-legacy", "gemma-gelu"])
def test_hub_config_shapes(model_zoo, tmp_path, family, changes):
    built = model_zoo.get(family)
    path = with_config(built, tmp_path / "m", **changes)
    assert max_prompt_logprob_error(built, path, seeded_prompt(built, 40, seed=54)) <= 1e-3


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_split(model_zoo, family, tp, pp):
    """-tp 2 (heads, soft-capped scores and q/k norms per rank; the logits soft-capped after the
    gather) and -pp 2, against transformers' logits."""
    built = model_zoo.get(family)
    prompt = seeded_prompt(built, 30, seed=55)
    group = f"cserve-test-{family}-{os.getpid()}-{tp}-{pp}"
    got = np.asarray(_core.testing.tensor_parallel_logits(built.path, tp, prompt, group, pp=pp))
    np.testing.assert_allclose(got.reshape(len(prompt), -1), built.logits(prompt), atol=2e-3, rtol=0)


@pytest.mark.parametrize("family,changes,match", [
    ("gemma2", dict(hidden_activation="relu"), "hidden_activation relu"),
    ("gemma2", dict(query_pre_attn_scalar=-1), "query_pre_attn_scalar"),
    ("gemma2", dict(attn_logit_softcapping=-3.0), "attn_logit_softcapping"),
    ("gemma3", dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ("gemma3", dict(rope_parameters=dict(GEMMA3_ROPE, sliding_attention={"rope_type": "linear", "factor": 2.0,
                                                                         "rope_theta": 100.0})),
     "sliding_attention"),
])
def test_refused_by_name(model_zoo, tmp_path, family, changes, match):
    built = model_zoo.get(family)
    with pytest.raises((ValueError, NotImplementedError), match=match):
        make_llm(with_config(built, tmp_path / "m", **changes))



@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_disable_sliding_window_caps_the_context(model_zoo, family):
    """--disable-sliding-window: every layer attends fully and, as in vLLM, the context is capped
    at the window (the layers interleave a window of 12 with full attention); Gemma 3's sliding
    layers keep their own RoPE."""
    built = model_zoo.get(family)
    with pytest.raises(ValueError, match=r"max_model_len \(256\) is greater than the derived max_model_len "
                                         r"\(sliding_window=12"):
        make_llm(built.path, disable_sliding_window=True)
    llm = make_llm(built.path, disable_sliding_window=True, max_model_len=None)
    assert llm.model_info.max_model_len == 12
    prompt = seeded_prompt(built, 8, seed=57)  # within the window: full attention changes nothing
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=4))
    check_request(built, out)


@pytest.fixture(scope="module")
def gemma3_multimodal(tmp_path_factory):
    """A tiny Gemma3ForConditionalGeneration (vision tower and all), saved as transformers saves it."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from tests.helpers.models import _randomize

    text = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=20, sliding_window=12,
                max_position_embeddings=512,
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                 "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}},
                layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                          boi_token_index=297, eoi_token_index=298, eos_token_id=[1, 106], bos_token_id=2)
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).to(torch.float32).eval()
    _randomize(model, 7)
    path = tmp_path_factory.mktemp("gemma3mm")
    model.save_pretrained(str(path), safe_serialization=True)
    return model, path


def _gemma3_multimodal_error(model, path, prompt):
    import torch

    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=torch.tensor([prompt])).logits[0].float(), -1).numpy()
    llm = make_llm(str(path))
    assert llm.model_info.architecture == "Gemma3ForConditionalGeneration"
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))
    got = np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])
    return np.abs(got - np.array([ref[i - 1, prompt[i]] for i in range(1, len(prompt))])).max()


def test_gemma3_multimodal_checkpoint_serves_its_language_model(gemma3_multimodal):
    """Gemma 3's image-text checkpoints (text_config, weights under language_model.model.): text
    prompts give transformers' logits; the vision tower is not loaded."""
    model, path = gemma3_multimodal
    prompt = random_prompt(np.random.default_rng(58), 30, 296)
    assert _gemma3_multimodal_error(model, path, prompt) <= 1e-3


def test_gemma3_multimodal_newer_weight_names(gemma3_multimodal, tmp_path):
    """Checkpoints saved since transformers 4.52 name the decoder model.language_model.*."""
    import shutil

    from safetensors.numpy import load_file, save_file

    model, path = gemma3_multimodal
    shutil.copytree(path, tmp_path / "m")
    tensors = load_file(f"{tmp_path}/m/model.safetensors")
    renamed = {("model.language_model." + k[len("language_model.model."):] if k.startswith("language_model.model.")
                else k): v for k, v in tensors.items()}
    assert "model.language_model.embed_tokens.weight" in renamed
    save_file(renamed, f"{tmp_path}/m/model.safetensors", metadata={"format": "pt"})
    prompt = random_prompt(np.random.default_rng(59), 30, 296)
    assert _gemma3_multimodal_error(model, tmp_path / "m", prompt) <= 1e-3


def test_hf_overrides_reach_the_per_layer_windows(model_zoo, tmp_path):
    """--hf-overrides (LLM(hf_overrides=...)) is merged into config.json before it is read, as
    vLLM merges it into the Hugging Face config: Gemma 2 with every layer full attention gives
    transformers' logits of that config, not of the original; --hf-config-path reads another
    config.json."""
    import json

    built = model_zoo.get("gemma2")
    prompt = seeded_prompt(built, 40, seed=60)
    overrides = {"layer_types": ["full_attention", "full_attention"]}
    full = with_config(built, tmp_path / "full", **overrides)
    ref_full = make_llm(full).generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))[0]
    got = make_llm(built.path, hf_overrides=overrides).generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))[0]
    for i in range(1, len(prompt)):
        assert abs(got.prompt_logprobs[i][prompt[i]].logprob - ref_full.prompt_logprobs[i][prompt[i]].logprob) < 1e-5
    assert max_prompt_logprob_error(built, full, prompt) > 1e-2  # the override changed something
    config_file = tmp_path / "other.json"
    config_file.write_text(json.dumps(dict(built.config, **overrides)))
    other = make_llm(built.path, hf_config_path=str(config_file))
    got = other.generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))[0]
    assert abs(got.prompt_logprobs[30][prompt[30]].logprob - ref_full.prompt_logprobs[30][prompt[30]].logprob) < 1e-5
    with pytest.raises(ValueError, match="hf_overrides must be a JSON object"):
        _core.Engine(_bad_overrides_config(built.path))


def _bad_overrides_config(path):
    config = _core.EngineConfig()
    config.model = path
    config.dtype = "float32"
    config.max_model_len = 64
    config.device = "cpu"
    config.hf_overrides = "[1, 2]"
    return config
