"""Granite, OLMo 2 and SmolLM3 beyond the shared parity tests (test_parity.py runs them with the
other families): greedy generation equal to transformers' generate(), the family options matter
(the parity is not vacuous), SmolLM3's configs without layer_types / no_rope_layers, and what is
refused by name."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import _core
from tests.helpers.models import check_request, greedy, make_llm, random_prompt, with_config

NEW_FAMILIES = ["granite", "olmo2", "smollm3"]


def _prompt(built, length, seed):
    return random_prompt(np.random.default_rng(seed), length, built.vocab_size)


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_greedy_matches_transformers_generate(model_zoo, family):
    import torch

    built = model_zoo.get(family)
    prompt = _prompt(built, 27, seed=41)
    with torch.no_grad():
        ids = built.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   min_new_tokens=12, pad_token_id=0)[0, len(prompt):].tolist()
    (out,) = make_llm(built.path).generate({"prompt_token_ids": prompt}, greedy(max_tokens=12))
    assert out.outputs[0].token_ids == ids


def _max_prompt_logprob_error(built, path, prompt):
    ref = built.logprobs(prompt)
    (out,) = make_llm(path).generate({"prompt_token_ids": prompt}, greedy(max_tokens=1))
    got = np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])
    want = np.array([ref[i - 1, prompt[i]] for i in range(1, len(prompt))])
    return np.abs(got - want).max()


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
    prompt = _prompt(built, 40, seed=42)  # longer than SmolLM3's window of 12
    assert _max_prompt_logprob_error(built, built.path, prompt) <= 1e-3
    assert _max_prompt_logprob_error(built, with_config(built, tmp_path / "m", **changes), prompt) > 1e-2


def test_smollm3_derived_layer_settings(model_zoo, tmp_path):
    """Without layer_types the window goes to the NoPE layers, and without no_rope_layers every
    no_rope_layer_interval-th layer is NoPE, as transformers derives them."""
    built = model_zoo.get("smollm3")
    assert built.config["no_rope_layers"] == [1, 1, 0, 1]
    assert built.config["layer_types"][2] == "sliding_attention"
    path = with_config(built, tmp_path / "m", layer_types=None, no_rope_layers=None)
    (out,) = make_llm(path).generate({"prompt_token_ids": _prompt(built, 40, seed=43)}, greedy(max_tokens=8))
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
