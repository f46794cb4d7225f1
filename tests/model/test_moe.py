"""Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, gpt-oss) beyond the shared parity tests
(test_parity.py runs them with the other families): greedy generation equal to transformers'
generate(), the routing options honoured, -tp 2 (each expert split as a
dense MLP) and -pp 2, and what is refused by name."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import _core
from tests.helpers.models import (check_generate, make_llm, max_prompt_logprob_error, seeded_prompt, with_config)

MOES = ["mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss"]




@pytest.mark.parametrize("family", MOES)
def test_greedy_matches_transformers_generate(model_zoo, family):
    built = model_zoo.get(family)
    check_generate(built, seeded_prompt(built, 30, seed=61))


@pytest.mark.parametrize("family,changes", [
    ("qwen3_moe", dict(norm_topk_prob=False)),
    ("qwen2_moe", dict(norm_topk_prob=True)),
    ("mixtral", dict(num_experts_per_tok=1)),
    ("qwen2_moe", dict(mlp_only_layers=[])),  # layer 1's dense MLP weights then absent: an error
    ("gpt_oss", dict(swiglu_limit=7.0)),
    ("gpt_oss", dict(swiglu_alpha=1.0)),
    ("gpt_oss", dict(layer_types=["full_attention", "full_attention"])),
    ("gpt_oss", dict(rope_parameters={"rope_type": "default", "rope_theta": 150000.0})),
], ids=["qwen3-norm", "qwen2-norm", "top-k", "mlp-only", "swiglu-limit", "swiglu-alpha", "gpt-oss-windows",
        "gpt-oss-yarn"])
def test_options_matter(model_zoo, tmp_path, family, changes):
    """With one option changed in config.json, cserve no longer matches transformers on the
    original config (or refuses the checkpoint): each option is honoured, not ignored."""
    built = model_zoo.get(family)
    prompt = seeded_prompt(built, 40, seed=63)
    assert max_prompt_logprob_error(built, built.path, prompt) <= 1e-3
    path = with_config(built, tmp_path / "m", **changes)
    if "mlp_only_layers" in changes:
        with pytest.raises(FileNotFoundError, match=r"model.layers.1.mlp.gate.weight"):
            make_llm(path)
        return
    assert max_prompt_logprob_error(built, path, prompt) > 1e-2


@pytest.mark.parametrize("family", MOES)
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_split(model_zoo, family, tp, pp):
    """-tp 2 (every expert and the shared one split as dense MLPs, the router on every rank) and
    -pp 2, against transformers' logits."""
    built = model_zoo.get(family)
    prompt = seeded_prompt(built, 30, seed=64)
    group = f"cserve-test-{family}-{os.getpid()}-{tp}-{pp}"
    got = np.asarray(_core.testing.tensor_parallel_logits(built.path, tp, prompt, group, pp=pp))
    np.testing.assert_allclose(got.reshape(len(prompt), -1), built.logits(prompt), atol=2e-3, rtol=0)


@pytest.mark.parametrize("family,changes,match", [
    ("mixtral", dict(num_experts_per_tok=5), "num_experts_per_tok"),
    ("qwen3_moe", dict(mlp_only_layers=[7]), "mlp_only_layers"),
    ("qwen3_moe", dict(moe_intermediate_size=0), "moe_intermediate_size"),
])
def test_refused_by_name(model_zoo, tmp_path, family, changes, match):
    built = model_zoo.get(family)
    with pytest.raises(ValueError, match=match):
        make_llm(with_config(built, tmp_path / "m", **changes))


def test_tensor_parallel_needs_divisible_expert_width(model_zoo, tmp_path):
    built = model_zoo.get("qwen2_moe")
    path = with_config(built, tmp_path / "m", moe_intermediate_size=33)
    with pytest.raises(ValueError, match=r"moe_intermediate_size \(33\) must be divisible by tensor parallel size \(2\)"):
        _core.testing.tensor_parallel_logits(path, 2, [5, 6], f"cserve-test-moe-tp-{os.getpid()}")


def test_gpt_oss_sinks_are_read(model_zoo, tmp_path):
    """The attention sinks come from the checkpoint: other sink values, other logits."""
    from safetensors.numpy import load_file, save_file

    built = model_zoo.get("gpt_oss")
    prompt = seeded_prompt(built, 40, seed=65)
    path = with_config(built, tmp_path / "m")
    tensors = load_file(f"{path}/model.safetensors")
    for name in tensors:
        if name.endswith("self_attn.sinks"):
            tensors[name] = tensors[name] + 3.0
    save_file(tensors, f"{path}/model.safetensors", metadata={"format": "pt"})
    assert max_prompt_logprob_error(built, path, prompt) > 1e-2
