"""Granite, OLMo 2, SmolLM3 and Phi-3 beyond the shared parity tests (test_parity.py runs them with
the other families): greedy generation equal to transformers' generate() (Phi-3 on its long and
short RoPE factors), the family options matter (the parity is not vacuous), Phi-3 split by -tp /
-pp on the long factors, SmolLM3's configs without layer_types / no_rope_layers, and what is
refused by name."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import _core
from tests.helpers.models import (check_generate, check_request, greedy, make_llm, max_prompt_logprob_error, seeded_prompt, with_config)

NEW_FAMILIES = ["granite", "olmo2", "smollm3"]



# phi3_long (original_max_position_embeddings 32 of 256, partial_rotary_factor 0.5): its 40-token
# prompt runs on the long RoPE factors, the 10-token one (and its 12 new tokens) on the short ones.
GENERATE_CASES = [(f, 27) for f in NEW_FAMILIES] + [("phi3_long", 40), ("phi3_long", 10)]


@pytest.mark.parametrize("family,length", GENERATE_CASES, ids=[f"{f}-{n}" for f, n in GENERATE_CASES])
def test_greedy_matches_transformers_generate(model_zoo, family, length):
    built = model_zoo.get(family)
    check_generate(built, seeded_prompt(built, length, seed=41))


@pytest.mark.parametrize("family,changes", [
    ("granite", dict(embedding_multiplier=1.0)),
    ("granite", dict(residual_multiplier=1.0)),
    ("granite", dict(attention_multiplier=None)),  # transformers' default 1.0, not 1/sqrt(head_dim)
    ("granite", dict(logits_scaling=None)),
    ("smollm3", dict(no_rope_layers=[1, 1, 1, 1])),
    ("smollm3", dict(use_sliding_window=False)),
], ids=["embedding", "residual", "attention", "logits", "no-nope", "no-window"])
def test_options_matter(model_zoo, tmp_path, family, changes):
    """With one option changed in config.json, cserve no longer matches transformers on the
    original config: each option is honoured, not ignored."""
    built = model_zoo.get(family)
    prompt = seeded_prompt(built, 40, seed=42)  # longer than SmolLM3's window of 12
    assert max_prompt_logprob_error(built, built.path, prompt) <= 1e-3
    assert max_prompt_logprob_error(built, with_config(built, tmp_path / "m", **changes), prompt) > 1e-2


def test_smollm3_derived_layer_settings(model_zoo, tmp_path):
    """Without layer_types the window goes to the NoPE layers, and without no_rope_layers every
    no_rope_layer_interval-th layer is NoPE, as transformers derives them."""
    built = model_zoo.get("smollm3")
    assert built.config["no_rope_layers"] == [1, 1, 0, 1]
    assert built.config["layer_types"][2] == "sliding_attention"
    path = with_config(built, tmp_path / "m", layer_types=None, no_rope_layers=None)
    (out,) = make_llm(path).generate({"prompt_token_ids": seeded_prompt(built, 40, seed=43)}, greedy(max_tokens=8))
    check_request(built, out)


def test_olmo2_tensor_parallel_is_refused(model_zoo):
    built = model_zoo.get("olmo2")
    group = f"cserve-test-olmo2-tp-{os.getpid()}"
    with pytest.raises(NotImplementedError, match=r"tensor parallelism is not supported for Olmo2ForCausalLM"):
        _core.testing.tensor_parallel_logits(built.path, 2, [5, 6, 7], group)


@pytest.mark.parametrize("family,changes,match", [
    ("granite", dict(logits_scaling=0), "logits_scaling"),
    ("granite", dict(embedding_multiplier=-2.0), "embedding_multiplier"),
    ("smollm3", dict(no_rope_layers=[1, 2, 1, 1]), "no_rope_layers"),
    ("smollm3", dict(no_rope_layers=[1, 0]), "no_rope_layers"),
    ("smollm3", dict(no_rope_layers=None, no_rope_layer_interval=0), "no_rope_layer_interval"),
])
def test_bad_values_are_refused_by_name(model_zoo, tmp_path, family, changes, match):
    built = model_zoo.get(family)
    with pytest.raises(ValueError, match=match):
        make_llm(with_config(built, tmp_path / "m", **changes))


def test_unknown_architecture_lists_the_new_families(model_zoo, tmp_path):
    built = model_zoo.get("olmo2")
    path = with_config(built, tmp_path / "m", architectures=["Olmo3ForCausalLM"], model_type="olmo3")
    with pytest.raises(NotImplementedError, match="GraniteForCausalLM, Olmo2ForCausalLM, SmolLM3ForCausalLM"):
        make_llm(path)


# ---- Phi-3 (fused qkv_proj / gate_up_proj, longrope; generation above) ----


@pytest.mark.parametrize("changes", [
    dict(long_factor=[3.0, 0.6, 5.0, 1.0]),
    dict(original_max_position_embeddings=64),  # the 40-token prompt back on the short factors
    dict(attention_factor=1.0),
], ids=["long-factor", "original-max", "attention-factor"])
def test_phi3_longrope_options_matter(model_zoo, tmp_path, changes):
    built = model_zoo.get("phi3_long")
    rope = dict(built.config["rope_parameters"])
    top = {}
    for k, v in changes.items():
        if k == "original_max_position_embeddings":
            top[k] = v
            rope[k] = v
        else:
            rope[k] = v
    prompt = seeded_prompt(built, 40, seed=45)
    assert max_prompt_logprob_error(built, built.path, prompt) <= 1e-3
    path = with_config(built, tmp_path / "m", rope_parameters=rope, **top)
    assert max_prompt_logprob_error(built, path, prompt) > 1e-2


def test_phi3_short_factor_matters(model_zoo, tmp_path):
    built = model_zoo.get("phi3_long")
    rope = dict(built.config["rope_parameters"], short_factor=[1.0, 3.0, 0.7, 2.5])
    prompt = seeded_prompt(built, 20, seed=46)
    assert max_prompt_logprob_error(built, built.path, prompt) <= 1e-3
    assert max_prompt_logprob_error(built, with_config(built, tmp_path / "m", rope_parameters=rope), prompt) > 1e-2


def test_phi3_legacy_rope_scaling_su(model_zoo, tmp_path):
    """Phi-3's older configs: rope_scaling {"type": "su", ...} is longrope."""
    built = model_zoo.get("phi3_long")
    rope = built.config["rope_parameters"]
    scaling = dict(type="su", short_factor=rope["short_factor"], long_factor=rope["long_factor"])
    path = with_config(built, tmp_path / "m", rope_parameters=None, rope_scaling=scaling, rope_theta=10000.0)
    assert max_prompt_logprob_error(built, path, seeded_prompt(built, 40, seed=47)) <= 1e-3


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_phi3_long_factors_split(model_zoo, tp, pp):
    """-tp 2 (q, k, v and gate, up rows sliced per rank out of the fused tensors) and -pp 2 on
    the long factors, against transformers' logits."""
    built = model_zoo.get("phi3_long")
    prompt = seeded_prompt(built, 40, seed=48)
    group = f"cserve-test-phi3-{os.getpid()}-{tp}-{pp}"
    got = np.asarray(_core.testing.tensor_parallel_logits(built.path, tp, prompt, group, pp=pp))
    np.testing.assert_allclose(got.reshape(len(prompt), -1), built.logits(prompt), atol=2e-3, rtol=0)


@pytest.mark.parametrize("rope,match", [
    (dict(short_factor=[1.0, 1.5]), "short_factor"),
    (dict(long_factor=None), "long_factor"),
    (dict(long_factor=[3.0, 0.6, -5.0, 1.8]), "long_factor"),
])
def test_phi3_bad_longrope_refused_by_name(model_zoo, tmp_path, rope, match):
    built = model_zoo.get("phi3_long")
    params = dict(built.config["rope_parameters"])
    for k, v in rope.items():
        if v is None:
            params.pop(k)
        else:
            params[k] = v
    with pytest.raises(ValueError, match=match):
        make_llm(with_config(built, tmp_path / "m", rope_parameters=params))
