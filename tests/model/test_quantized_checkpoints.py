"""Quantized Hugging Face checkpoints (AWQ, GPTQ, compressed-tensors w4a16, fp8) served on the
CPU with their weights kept quantized: a tiny random Llama is quantized by the reference packers
of tests/helpers/quant_formats.py, written in each format, and compared with transformers running
the dequantized weights (float32). The CPU kernels round activations to int8 per block of 32, so
the tolerance is the GGUF path's (tests/loader/test_gguf.py)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import quant_formats as qf
from tests.helpers.models import TEST_DEVICE, build_model, greedy, hf_logprobs, make_llm

# The CPU rounds activations to int8 per block of 32: on this model the top-5 prompt logprobs move by
# up to ~0.19 (mean ~0.03-0.04) from transformers on the same weights; a weight read wrongly costs
# whole nats (the best token leaves the top 5).
TOL_MAX, TOL_MEAN = 0.3, 0.06
HIDDEN, INTER = 128, 256


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    # head_dim 32, GQA 4:2: q 128 rows, k / v 64; k of 128 (q/k/v/o, gate/up) and 256 (down).
    return build_model(tmp_path_factory.mktemp("hf"), "llama", seed=5, hidden_size=HIDDEN, intermediate_size=INTER,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def _float_state(built) -> dict:
    return {k: v.detach().numpy().copy() for k, v in built.model.state_dict().items()}


def _quantize_model(built, path: Path, fmt: str, group: int, sym: bool = False, act_order: bool = False,
                    seed: int = 0, qkv_orders_differ: bool = False, bits: int = 4, keep_float=()):
    """Writes `fmt`'s checkpoint of built's weights to path; returns (path, dequantized state dict)."""
    rng = np.random.default_rng(seed)
    state = _float_state(built)
    tensors = {k: v for k, v in state.items()}
    deq = dict(state)
    for layer in range(built.config["num_hidden_layers"]):
        orders = {}  # one act-order permutation per input space, as GPTQ's shared Hessian gives
        for lin in qf.LINEARS:
            name = f"model.layers.{layer}.{lin}"
            if lin in keep_float:
                continue
            w = state[name + ".weight"]
            g_idx = None
            if act_order:
                key = "attn_in" if lin.split(".")[1] in ("q_proj", "k_proj", "v_proj") else \
                      "mlp_in" if lin.split(".")[1] in ("gate_proj", "up_proj") else lin
                if qkv_orders_differ and lin.endswith("k_proj"):
                    key = "k_own"
                if key not in orders:
                    orders[key] = qf.act_order_g_idx(w.shape[1], group, rng)
                g_idx = orders[key]
            q = qf.quantize_int(w, group, bits, sym=sym, g_idx=g_idx,
                                zero_range=(1, None) if fmt == "gptq" else (0, None))
            del tensors[name + ".weight"]
            if fmt == "awq":
                packed = qf.awq_tensors(q)
            elif fmt == "gptq":
                packed = qf.gptq_tensors(q, bits)
            else:
                packed = qf.compressed_tensors_tensors(q, bits, sym)
            if fmt == "compressed-tensors" and act_order:
                packed["weight_g_idx"] = q.g_idx
            for suffix, value in packed.items():
                tensors[f"{name}.{suffix}"] = value
            deq[name + ".weight"] = q.dequantize()
    if fmt == "awq":
        qc = {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": [lin.split(".")[1] for lin in keep_float] or None}
    elif fmt == "gptq":
        qc = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order, "sym": sym,
              "checkpoint_format": "gptq", "true_sequential": True}
    else:
        qc = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"], "input_activations": None,
                                            "weights": {"num_bits": 4, "type": "int", "symmetric": sym,
                                                        "strategy": "group", "group_size": group,
                                                        "actorder": "group" if act_order else None}}}}
    return qf.write_checkpoint(path, built.config, tensors, qc), deq


def _reference(built, deq: dict):
    import torch

    model = copy.deepcopy(built.model)
    with torch.no_grad():
        for name, value in deq.items():
            model.state_dict()[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return model


def _compare(path: str, ref_model, prompt_len: int = 24, max_tokens: int = 4, **options):
    """Top-5 prompt logprobs at every position within TOL_MAX (TOL_MEAN on average) of transformers,
    and a greedy continuation equal to transformers' for max_tokens tokens (up to a near tie)."""
    llm = make_llm(path, skip_tokenizer_init=True, **options)
    rng = np.random.default_rng(1)
    prompt = [int(t) for t in rng.integers(3, 256, size=prompt_len)]
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(max_tokens=max_tokens, prompt_logprobs=5),
                       use_tqdm=False)[0]
    tokens = list(out.outputs[0].token_ids)
    ref = hf_logprobs(ref_model, prompt + tokens)
    errors = []
    for i in range(1, len(prompt)):
        entries = out.prompt_logprobs[i]
        assert len(entries) >= 5
        assert int(ref[i - 1].argmax()) in entries, f"position {i}: transformers' best token not in cserve's top 5"
        errors += [abs(lp.logprob - ref[i - 1, tok]) for tok, lp in entries.items()]
    assert max(errors) <= TOL_MAX and np.mean(errors) <= TOL_MEAN, (max(errors), np.mean(errors))
    for j, tok in enumerate(tokens):  # each greedy step transformers' argmax (or within a near tie)
        row = ref[len(prompt) - 1 + j]
        assert row.max() - row[tok] <= TOL_MAX, (j, tok, int(row.argmax()))
    return llm


# ---- the packing itself ----

@pytest.mark.parametrize("fmt", ["awq", "gptq", "compressed-tensors"])
def test_packing_round_trips(fmt):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 256)).astype(np.float32)
    g_idx = qf.act_order_g_idx(256, 64, rng) if fmt == "gptq" else None
    q = qf.quantize_int(w, 64, 4, g_idx=g_idx, zero_range=(1, None) if fmt == "gptq" else (0, None))
    assert q.codes.max() == 15 and q.codes.min() == 0  # the full code range is exercised
    if fmt == "awq":
        codes, zeros = qf.awq_unpack(qf.awq_tensors(q))
    elif fmt == "gptq":
        codes, zeros = qf.gptq_unpack(qf.gptq_tensors(q))
    else:
        t = qf.compressed_tensors_tensors(q, 4, sym=False)
        stored = qf.unpack_along_last(t["weight_packed"], 4)
        zp = qf.unpack_along_last(np.ascontiguousarray(t["weight_zero_point"].T), 4).T  # [n][groups], offset
        codes, zeros = stored, zp.T
    np.testing.assert_array_equal(codes, q.codes)
    np.testing.assert_array_equal(zeros, q.zeros)
    # Dequantized weights are the float weights to within a step and a half (half for rounding the
    # value, half for rounding the zero point, half where GPTQ's zero is kept above 0).
    step = q.scales.astype(np.float32)[q.g_idx].T
    assert np.all(np.abs(q.dequantize() - w) <= step * 1.5 + 1e-6)


# ---- served against transformers ----

@pytest.mark.parametrize("group", [32, 64, 128])
def test_awq(llama, tmp_path, group):
    path, deq = _quantize_model(llama, tmp_path / "awq", "awq", group)
    llm = _compare(path, _reference(llama, deq))
    # Weights stay 4-bit on the CPU: far below the float32 model's bytes (CUDA holds them in bf16).
    assert TEST_DEVICE != "cpu" or llm.engine.model_info().weight_bytes < 0.6 * _float_linear_bytes(llama) + _other_bytes(llama)


@pytest.mark.parametrize("group,sym,act_order,bits", [(128, True, False, 4), (64, False, False, 4),
                                                      (32, True, True, 4), (64, False, True, 4), (128, True, True, 8)],
                         ids=["g128-sym", "g64-asym", "g32-sym-act-order", "g64-asym-act-order", "int8-g128-act-order"])
def test_gptq(llama, tmp_path, group, sym, act_order, bits):
    path, deq = _quantize_model(llama, tmp_path / "gptq", "gptq", group, sym=sym, act_order=act_order, seed=group,
                                bits=bits)
    _compare(path, _reference(llama, deq))


@pytest.mark.parametrize("group,sym,act_order", [(128, True, False), (32, False, False), (64, True, True)],
                         ids=["g128-sym", "g32-asym", "g64-sym-actorder"])
def test_compressed_tensors_w4a16(llama, tmp_path, group, sym, act_order):
    path, deq = _quantize_model(llama, tmp_path / "ct", "compressed-tensors", group, sym=sym, act_order=act_order)
    _compare(path, _reference(llama, deq))


def test_awq_with_half_biases_and_a_float_module(tmp_path):
    """q/k/v/o biases stored in f16 (as AutoAWQ writes Qwen2's) and down_proj left unquantized
    (modules_to_not_convert)."""
    import torch

    built = build_model(tmp_path / "hf", "llama", seed=6, hidden_size=HIDDEN, intermediate_size=INTER,
                        num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                        tie_word_embeddings=False)
    path, deq = _quantize_model(built, tmp_path / "awq", "awq", 64, keep_float=("mlp.down_proj",))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(Path(path) / "model.safetensors"))
    assert "model.layers.0.mlp.down_proj.weight" in tensors and "model.layers.0.self_attn.q_proj.bias" in tensors
    for name in [n for n in tensors if n.endswith(".bias")]:
        tensors[name] = tensors[name].to(torch.float16)
        deq[name] = tensors[name].float().numpy()
    save_file(tensors, str(Path(path) / "model.safetensors"), metadata={"format": "pt"})
    _compare(path, _reference(built, deq))


def test_marlin_names_serve_the_same_checkpoints(llama, tmp_path):
    path, deq = _quantize_model(llama, tmp_path / "awq", "awq", 64)
    _compare(path, _reference(llama, deq), max_tokens=2, quantization="awq_marlin")
    path, deq = _quantize_model(llama, tmp_path / "gptq", "gptq", 64)
    _compare(path, _reference(llama, deq), max_tokens=2, quantization="gptq_marlin")


def _float_linear_bytes(built) -> int:
    return sum(v.numel() * 4 for k, v in built.model.state_dict().items()
               if any(f".{lin}.weight" in k for lin in qf.LINEARS))


def _other_bytes(built) -> int:
    return sum(v.numel() * 4 for k, v in built.model.state_dict().items()
               if not any(f".{lin}.weight" in k for lin in qf.LINEARS))


# ---- tensor parallelism ----

def _tp_logits(path: str, tp: int, prompt: list, pp: int = 1) -> np.ndarray:
    from cserve import _core

    group = f"cserve-test-qtp-{os.getpid()}-{tp}-{pp}-{abs(hash(path)) % 10**8}"
    return np.asarray(_core.testing.tensor_parallel_logits(path, tp, prompt, group, pp=pp))


def test_awq_tensor_parallel_equals_whole(llama, tmp_path):
    """-tp 2: q/k/v and gate/up split along n, o and down along k inside a group of 64."""
    path, _ = _quantize_model(llama, tmp_path / "awq", "awq", 64)
    prompt = [5, 17, 99, 3, 42, 250, 7, 8, 61, 200]
    whole = _tp_logits(path, 1, prompt).reshape(len(prompt), -1)
    split = _tp_logits(path, 2, prompt).reshape(len(prompt), -1)
    # Activation blocks of 32 fall the same way on both sides of the split: float-order noise only.
    assert np.abs(split - whole).max() < 1e-3 * max(1.0, np.abs(whole).max())
    stages = _tp_logits(path, 1, prompt, pp=2).reshape(len(prompt), -1)  # two pipeline stages
    assert np.abs(stages - whole).max() < 1e-3 * max(1.0, np.abs(whole).max())


def test_act_order_split_along_k_is_refused(llama, tmp_path):
    path, _ = _quantize_model(llama, tmp_path / "gptq", "gptq", 64, act_order=True)
    with pytest.raises(NotImplementedError, match=r"(o_proj|down_proj): the quantization groups.*tensor-parallel"):
        _tp_logits(path, 2, [5, 6, 7])


# ---- refusals ----

def _with_quant_config(built, path: Path, qc: dict) -> str:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.safetensors").symlink_to(Path(built.path) / "model.safetensors")
    cfg = dict(built.config, quantization_config=qc)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("qc,message", [
    ({"quant_method": "awq", "bits": 4, "group_size": 48, "zero_point": True}, "group_size 48"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 16, "sym": True}, "group_size 16"),
    ({"quant_method": "gptq", "bits": 3, "group_size": 128, "sym": True}, "3 bits"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes.*not supported"),
    ({"quant_method": "frobnicate"}, "Unknown quantization method: frobnicate"),
])
def test_unsupported_configs_are_refused(llama, tmp_path, qc, message):
    path = _with_quant_config(llama, tmp_path / "m", qc)
    with pytest.raises((NotImplementedError, ValueError), match=message):
        make_llm(path, skip_tokenizer_init=True)


def test_quantization_flag_must_match_the_checkpoint(llama, tmp_path):
    path, _ = _quantize_model(llama, tmp_path / "awq", "awq", 128)
    with pytest.raises(ValueError, match=r"model config \(awq\) does not match .* argument \(gptq\)"):
        make_llm(path, skip_tokenizer_init=True, quantization="gptq")
    with pytest.raises(NotImplementedError, match="bitsandbytes.*not supported"):
        make_llm(path, skip_tokenizer_init=True, quantization="bitsandbytes")
    with pytest.raises(ValueError, match="Unknown quantization method: nope"):
        make_llm(path, skip_tokenizer_init=True, quantization="nope")
    with pytest.raises(ValueError, match=r"model config \(none\) does not match"):
        make_llm(llama.path, skip_tokenizer_init=True, quantization="awq")


def test_fused_parts_with_different_act_orders_are_refused(llama, tmp_path):
    path, _ = _quantize_model(llama, tmp_path / "gptq", "gptq", 64, act_order=True, qkv_orders_differ=True)
    with pytest.raises(NotImplementedError, match="different activation orders"):
        make_llm(path, skip_tokenizer_init=True)


# ---- fp8 ----

def _fp8_model(built, path: Path, kind: str):
    """kind: "block" ("fp8", weight_scale_inv per 128x128), "tensor" ("fp8", one weight_scale),
    "ct-channel" (compressed-tensors float-quantized, per output channel)."""
    state = _float_state(built)
    tensors, deq = dict(state), dict(state)
    for layer in range(built.config["num_hidden_layers"]):
        for lin in qf.LINEARS:
            name = f"model.layers.{layer}.{lin}"
            q, scale, d = qf.quantize_fp8(state[name + ".weight"], block=(128, 128) if kind == "block" else None,
                                          per_channel=kind == "ct-channel")
            tensors[name + ".weight"] = q
            if kind == "block":
                tensors[name + ".weight_scale_inv"] = scale
            elif kind == "tensor":
                tensors[name + ".weight_scale"] = scale.reshape(())
                tensors[name + ".input_scale"] = scale.reshape(()) * 0 + 0.05  # static scheme: not used here
            else:
                import torch

                tensors[name + ".weight_scale"] = scale.to(torch.bfloat16)
                deq[name + ".weight"] = (q.float() * scale.to(torch.bfloat16).float()).numpy()
                continue
            deq[name + ".weight"] = d
    if kind == "block":
        qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3", "weight_block_size": [128, 128]}
    elif kind == "tensor":
        qc = {"quant_method": "fp8", "activation_scheme": "static", "ignored_layers": ["lm_head"]}
    else:
        qc = {"quant_method": "compressed-tensors", "format": "float-quantized", "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"],
                                            "weights": {"num_bits": 8, "type": "float", "symmetric": True,
                                                        "strategy": "channel", "dynamic": False},
                                            "input_activations": {"num_bits": 8, "type": "float",
                                                                  "strategy": "token", "dynamic": True}}}}
    return qf.write_checkpoint(path, built.config, tensors, qc), deq


@pytest.mark.parametrize("kind", ["block", "tensor", "ct-channel"])
def test_fp8_checkpoints(llama, tmp_path, kind):
    path, deq = _fp8_model(llama, tmp_path / kind, kind)
    llm = _compare(path, _reference(llama, deq))
    # 8-bit codes and f32 block scales on the CPU: well under half the float32 model's linear bytes.
    assert TEST_DEVICE != "cpu" or llm.engine.model_info().weight_bytes < 0.45 * _float_linear_bytes(llama) + _other_bytes(llama)


def test_online_fp8_of_a_float_checkpoint(llama):
    """vLLM's --quantization fp8 on a float checkpoint: each projection rounded to e4m3 with a
    per-tensor scale at load."""
    deq = _float_state(llama)
    for name in [n for n in deq if any(f".{lin}.weight" in n for lin in qf.LINEARS)]:
        deq[name] = qf.quantize_fp8(deq[name])[2]
    _compare(llama.path, _reference(llama, deq), quantization="fp8")
