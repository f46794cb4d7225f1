"""gpt-oss with MXFP4 experts, as its checkpoints ship (quant_method "mxfp4"): the tiny gpt-oss's
expert weights quantized by the reference packer of tests/helpers/quant_formats.py, written as
*_blocks / *_scales tensors, served with the experts kept quantized, and compared with transformers
running the dequantized weights (float32). The CPU rounds activations to int8 per block of 32:
the tolerances are the other quantized checkpoints' (test_quantized_checkpoints.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import quant_formats as qf
from tests.helpers.models import SPECS, TEST_DEVICE, build_model, make_llm, seeded_prompt
from tests.model.test_quantized_checkpoints import _compare, _reference

MXFP4_CONFIG = {"quant_method": "mxfp4",
                "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                           "model.embed_tokens", "lm_head"]}


def _mxfp4_checkpoint(built, path: Path, nan_scale: bool = False):
    """built's checkpoint with each layer's experts in MXFP4; returns (path, dequantized state)."""
    state = {k: v.detach().numpy().copy() for k, v in built.model.state_dict().items()}
    tensors, deq = dict(state), dict(state)
    for name in [n for n in state if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        rows_by_k = np.ascontiguousarray(np.swapaxes(state[name], 1, 2))  # x @ W [E][k][rows] -> [E][rows][k]
        codes, scales = qf.quantize_mxfp4(rows_by_k)
        del tensors[name]
        tensors[name + "_blocks"] = qf.pack_mxfp4(codes)
        tensors[name + "_scales"] = scales
        deq[name] = np.swapaxes(qf.dequantize_mxfp4(codes, scales), 1, 2)
    if nan_scale:
        tensors["model.layers.1.mlp.experts.down_proj_scales"][2, 5, 0] = 255
    return qf.write_checkpoint(path, built.config, tensors, MXFP4_CONFIG), deq


@pytest.fixture(scope="module")
def gpt_oss(tmp_path_factory):
    spec = dict(SPECS["gpt_oss"])
    return build_model(tmp_path_factory.mktemp("hf"), spec.pop("model_type"), seed=7, **spec)


# ---- the format ----

def test_packing_round_trips():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8, 96)).astype(np.float32) * np.exp2(rng.integers(-6, 6, size=(3, 8, 1)))
    codes, scales = qf.quantize_mxfp4(w)
    assert set(np.unique(codes)) == set(range(16)) - {8}  # every code but -0 is exercised
    blocks = qf.pack_mxfp4(codes)
    assert blocks.shape == (3, 8, 3, 16) and blocks.dtype == np.uint8
    np.testing.assert_array_equal(qf.unpack_mxfp4(blocks), codes)
    # Within half a step of the block's scale, as e2m1 rounds (steps of 2 between 4 and 6; clipped at 6).
    deq = qf.dequantize_mxfp4(codes, scales)
    step = np.exp2(scales.astype(np.float32) - 127).repeat(32, axis=-1).reshape(w.shape)
    assert np.all(np.abs(deq - w) <= np.maximum(step, np.abs(w) - 6 * step) + 1e-6)


def test_layout_is_transformers():
    """transformers' convert_moe_packed_tensors reads the packed tensors to the same x @ W weights."""
    import torch
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    rng = np.random.default_rng(1)
    w = rng.standard_normal((2, 64, 96)).astype(np.float32)  # [E][rows][k]
    codes, scales = qf.quantize_mxfp4(w)
    theirs = convert_moe_packed_tensors(torch.from_numpy(qf.pack_mxfp4(codes)), torch.from_numpy(scales),
                                        dtype=torch.float32).numpy()
    np.testing.assert_array_equal(theirs, np.swapaxes(qf.dequantize_mxfp4(codes, scales), 1, 2))


# ---- served against transformers ----

def test_mxfp4_experts_match_transformers(gpt_oss, tmp_path):
    path, deq = _mxfp4_checkpoint(gpt_oss, tmp_path / "mxfp4")
    llm = _compare(path, _reference(gpt_oss, deq))
    if TEST_DEVICE == "cpu":  # the experts stay 8-bit codes: well under their float32 bytes
        state = gpt_oss.model.state_dict()
        experts = sum(v.numel() * 4 for k, v in state.items() if k.endswith(("gate_up_proj", "down_proj")))
        others = sum(v.numel() * 4 for k, v in state.items() if not k.endswith(("gate_up_proj", "down_proj")))
        assert llm.engine.model_info().weight_bytes < others + 0.4 * experts


def test_quantization_flag_names_mxfp4(gpt_oss, tmp_path):
    path, deq = _mxfp4_checkpoint(gpt_oss, tmp_path / "mxfp4")
    _compare(path, _reference(gpt_oss, deq), max_tokens=2, quantization="mxfp4")
    with pytest.raises(ValueError, match=r"model config \(mxfp4\) does not match .* argument \(awq\)"):
        make_llm(path, skip_tokenizer_init=True, quantization="awq")


def _tp_logits(path: str, tp: int, prompt: list) -> np.ndarray:
    from cserve import _core

    group = f"cserve-test-mxfp4-{os.getpid()}-{tp}-{abs(hash(path)) % 10**8}"
    return np.asarray(_core.testing.tensor_parallel_logits(path, tp, prompt, group)).reshape(len(prompt), -1)


def test_tensor_parallel_equals_whole(tmp_path):
    """-tp 2 splits each expert's width: gate / up rows, and down's input features on whole blocks."""
    spec = dict(SPECS["gpt_oss"], intermediate_size=64)
    built = build_model(tmp_path / "hf", spec.pop("model_type"), seed=8, **spec)
    path, _ = _mxfp4_checkpoint(built, tmp_path / "mxfp4")
    prompt = seeded_prompt(built, 12, seed=3)
    whole, split = _tp_logits(path, 1, prompt), _tp_logits(path, 2, prompt)
    assert np.abs(split - whole).max() < 1e-3 * max(1.0, np.abs(whole).max())


# ---- refusals ----

def test_split_inside_a_block_is_refused(gpt_oss, tmp_path):
    path, _ = _mxfp4_checkpoint(gpt_oss, tmp_path / "mxfp4")  # expert width 32: 16 features per rank
    with pytest.raises(NotImplementedError, match=r"down_proj: MXFP4 blocks hold 32 input features.*\(16 per rank\)"):
        _tp_logits(path, 2, [5, 6, 7])


def test_nan_scale_is_refused(gpt_oss, tmp_path):
    path, _ = _mxfp4_checkpoint(gpt_oss, tmp_path / "mxfp4", nan_scale=True)
    with pytest.raises(ValueError, match=r"layers.1.mlp.experts.down_proj_scales: expert 2 .* 255 \(NaN\)"):
        make_llm(path, skip_tokenizer_init=True)


def test_mxfp4_on_another_family_is_refused(tmp_path):
    built = build_model(tmp_path / "hf", "llama", seed=9, hidden_size=64, intermediate_size=64,
                        num_attention_heads=4, num_key_value_heads=2)
    path = qf.write_checkpoint(tmp_path / "m", built.config,
                               {k: v.detach().numpy() for k, v in built.model.state_dict().items()}, MXFP4_CONFIG)
    with pytest.raises(NotImplementedError, match=r"'mxfp4' is supported for gpt-oss .* only, not llama"):
        make_llm(path, skip_tokenizer_init=True)


# ---- GGUF: llama.cpp's gpt-oss files ----

# llama.cpp hard-codes gpt-oss's SwiGLU limit (7) and floors / ceils YaRN's correction range: the
# reference model is built with those so the file means the same model.
AS_LLAMA_CPP = dict(swiglu_limit=7.0, rope_parameters={
    "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True,
    "original_max_position_embeddings": 4096, "rope_theta": 150000.0})


def _gguf_model(tmp_path: Path, nan_scale: bool = False, **changes):
    """A tiny gpt-oss, its GGUF file, and a transformers copy holding exactly the file's weights."""
    import copy

    import torch

    from tests.helpers.gguf_gpt_oss import write_gpt_oss_gguf

    spec = dict(SPECS["gpt_oss"], **AS_LLAMA_CPP, **changes)
    built = build_model(tmp_path / "hf", spec.pop("model_type"), seed=11, **spec)
    ref = copy.deepcopy(built.model)
    path = tmp_path / "gpt-oss.gguf"
    stored = write_gpt_oss_gguf(ref, path, nan_scale=nan_scale)
    with torch.no_grad():
        state = ref.state_dict()
        assert set(state) == set(stored), "the file holds every weight"
        for name, value in stored.items():
            state[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return str(path), ref


def test_gguf_blocks_dequantize_as_llama_cpp():
    """ggml's MXFP4 blocks (an E8M0 byte, value j in the low and j + 16 in the high nibble) read as
    gguf-py's reference reads them, every code and scale 0..251 included."""
    gguf = pytest.importorskip("gguf")
    from gguf import quants

    from cserve import _core

    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, size=(252, 17), dtype=np.uint8)
    raw[:, 0] = np.arange(252)
    want = quants.dequantize(raw, gguf.GGMLQuantizationType.MXFP4).reshape(252, 32)
    got = np.asarray(_core.testing.dequantize(int(gguf.GGMLQuantizationType.MXFP4), raw.tobytes(), 252, 32))
    np.testing.assert_array_equal(got, want)


def test_gguf_gpt_oss_matches_transformers(tmp_path):
    pytest.importorskip("gguf")
    path, ref = _gguf_model(tmp_path)
    _compare(path, ref)


def test_gguf_tensor_parallel_equals_whole(tmp_path):
    pytest.importorskip("gguf")
    path, _ = _gguf_model(tmp_path, intermediate_size=64)
    prompt = [5, 17, 99, 3, 42, 250, 7, 8, 61, 200]
    whole, split = _tp_logits(path, 1, prompt), _tp_logits(path, 2, prompt)
    assert np.abs(split - whole).max() < 1e-3 * max(1.0, np.abs(whole).max())


def test_gguf_nan_scale_is_refused(tmp_path):
    pytest.importorskip("gguf")
    path, _ = _gguf_model(tmp_path, nan_scale=True)
    with pytest.raises(ValueError, match=r"blk.1.ffn_down_exps.weight holds the E8M0 scale 255 \(NaN\)"):
        make_llm(path, skip_tokenizer_init=True)
