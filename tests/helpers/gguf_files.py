"""GGUF files written in tests from transformers models, as llama.cpp's converter writes them
(q/k rows permuted for llama's interleaved rope, matrices in a chosen ggml type)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

_LAYER = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER[module]}.{kind}"


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path: Path, matrix_type=None, tokens: Optional[list[str]] = None,
                     fields: dict | None = None) -> dict:
    """Writes `model` (a transformers Llama) to path; returns {hf name: weight as stored, dequantized,
    un-permuted} so a reference model can load exactly what the file holds. `fields` (GGUFWriter
    method name -> value) adds metadata, a whole tokenizer for one; its bos/eos ids replace the
    default ones (0 and 1)."""
    import gguf
    from gguf import quants

    cfg = model.config
    matrix_type = matrix_type or gguf.GGMLQuantizationType.F32
    w = gguf.GGUFWriter(str(path), "llama")
    _shape_metadata(w, cfg, getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"])
    fields = dict(fields or {})
    w.add_eos_token_id(fields.pop("add_eos_token_id", 1))
    w.add_bos_token_id(fields.pop("add_bos_token_id", 0))
    for method, value in fields.items():
        getattr(w, method)(value)
    if tokens:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
    stored = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        data = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            data = permute(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute(data, cfg.num_key_value_heads)
        if data.ndim == 2 and matrix_type != gguf.GGMLQuantizationType.F32:
            raw = quants.quantize(data, matrix_type)
            w.add_tensor(gguf_name(name), raw, raw_dtype=matrix_type)
            data = quants.dequantize(raw, matrix_type).reshape(data.shape)
        else:
            w.add_tensor(gguf_name(name), data.astype(np.float32))
        if name.endswith("q_proj.weight"):  # back to the transformers row order
            data = permute_back(data, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = permute_back(data, cfg.num_key_value_heads)
        stored[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def permute_back(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---- Gemma 1/2/3, the mixtures of experts, Phi-3, Granite, OLMo 2 and SmolLM3, as
# convert_hf_to_gguf.py writes them ----

# transformers model_type -> GGUF general.architecture (Mixtral is written as "llama" with experts).
FAMILY_ARCH = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "mixtral": "llama",
               "qwen2_moe": "qwen2moe", "qwen3_moe": "qwen3moe", "phi3": "phi3", "granite": "granite",
               "olmo2": "olmo2", "smollm3": "smollm3"}
# The converter's LlamaModel and its subclasses permute q/k rows (and biases) for llama.cpp's rope.
PERMUTED = ("mixtral", "granite", "smollm3")


def _permuted_heads(cfg, name: str) -> int:
    """The heads the converter permutes `name`'s rows over (0: not permuted)."""
    if cfg.model_type not in PERMUTED:
        return 0
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return cfg.num_attention_heads
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return cfg.num_key_value_heads
    return 0


def _check_llama_cpp_reads(cfg) -> None:
    """llama.cpp derives some Gemma settings instead of storing them: a model whose config differs
    would be converted into a file that means something else, so refuse to write it."""
    mt = cfg.model_type
    if mt in ("gemma2", "gemma3_text") and cfg.query_pre_attn_scalar != cfg.head_dim:
        raise ValueError("llama.cpp scales attention by 1/sqrt(head_dim): query_pre_attn_scalar must equal head_dim")
    n = cfg.num_hidden_layers
    if mt == "gemma2" and cfg.layer_types != ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]:
        raise ValueError("llama.cpp's Gemma 2 alternates sliding and full layers, sliding first")
    if mt == "gemma3_text":
        if cfg.layer_types != ["sliding_attention" if i % 6 < 5 else "full_attention" for i in range(n)]:
            raise ValueError("llama.cpp's Gemma 3 has five sliding layers to one full one")
        if cfg.rope_parameters["sliding_attention"].get("rope_theta") != 10000.0:
            raise ValueError("llama.cpp's Gemma 3 sliding layers use RoPE base 10000")
    if mt == "smollm3":
        if list(cfg.no_rope_layers[:n]) != [int((i + 1) % 4 != 0) for i in range(n)]:
            raise ValueError("llama.cpp's SmolLM3 skips RoPE on every 4th layer (no_rope_layer_interval 4)")
        if cfg.use_sliding_window:
            raise ValueError("llama.cpp runs SmolLM3 without a sliding window")
    if mt == "granite" and getattr(cfg, "head_dim", None) not in (None, cfg.hidden_size // cfg.num_attention_heads):
        raise ValueError("the converter ignores Granite's head_dim: it must be hidden_size / num_attention_heads")


def _shape_metadata(w, cfg, rope_theta: float) -> None:
    """The keys every architecture's file has: sizes, norm epsilon, RoPE base."""
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(rope_theta)


def _family_metadata(w, cfg) -> None:
    import gguf

    mt = cfg.model_type
    rope = getattr(cfg, "rope_parameters", None) or {}
    full_rope = rope.get("full_attention", rope)
    _shape_metadata(w, cfg, full_rope.get("rope_theta", 10000.0))
    if getattr(cfg, "head_dim", None) and mt != "granite":  # the converter drops Granite's
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if mt in ("granite", "smollm3", "phi3"):  # Phi-3: its rotary part
        rotary = full_rope.get("partial_rotary_factor", 1.0) if mt == "phi3" else 1.0
        w.add_rope_dimension_count(int(rotary * cfg.hidden_size) // cfg.num_attention_heads)
    if mt == "phi3":
        _phi3_metadata(w, cfg, full_rope)
    if mt == "granite":
        for method, value in (("add_attention_scale", cfg.attention_multiplier),
                              ("add_embedding_scale", cfg.embedding_multiplier),
                              ("add_residual_scale", cfg.residual_multiplier),
                              ("add_logit_scale", cfg.logits_scaling)):
            if value:
                getattr(w, method)(value)
    if full_rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full_rope["factor"])
    if mt == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    if mt == "gemma3_text":
        if cfg.final_logit_softcapping:
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        w.add_sliding_window(cfg.sliding_window)
    if mt == "mixtral":
        w.add_expert_count(cfg.num_local_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    if mt in ("qwen2_moe", "qwen3_moe"):
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    if mt == "qwen2_moe":
        w.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)


def _phi3_metadata(w, cfg, rope: dict) -> None:
    """Phi3MiniModel's keys: the original context, the window (0: none) and longrope's attention
    factor, computed as the converter computes it."""
    import math

    original = rope.get("original_max_position_embeddings") or cfg.original_max_position_embeddings
    w.add_rope_scaling_orig_ctx_len(original)
    w.add_sliding_window(cfg.sliding_window or 0)
    if rope.get("long_factor"):
        scale = cfg.max_position_embeddings / original
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)


def _extra_tensors(cfg):
    """Tensors the converter makes rather than copies: Phi-3's longrope factors."""
    rope = getattr(cfg, "rope_parameters", None) or {}
    if cfg.model_type == "phi3" and rope.get("long_factor"):
        yield "rope_factors_long.weight", np.array(rope["long_factor"], np.float32)
        yield "rope_factors_short.weight", np.array(rope["short_factor"], np.float32)


def _family_tensors(model):
    """(HF name as the converter sees it, array) in the converter's terms: the experts' fused
    gate_up_proj split into gate and up, each of [experts][rows][cols]."""
    for name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy()
        if name.endswith("experts.gate_up_proj"):
            half = data.shape[1] // 2
            base = name.removesuffix("gate_up_proj")
            yield base + "gate_proj.weight", data[:, :half]
            yield base + "up_proj.weight", data[:, half:]
        elif name.endswith("experts.down_proj"):
            yield name + ".weight", data
        else:
            yield name, data


def write_family_gguf(model, path: Path, matrix_type=None, fields: dict | None = None,
                      tokens: Optional[list[str]] = None) -> dict:
    """Writes `model` (transformers Gemma / Gemma 2 / Gemma 3 text / Mixtral / Qwen2-MoE / Qwen3-MoE /
    Phi-3 / Granite / OLMo 2 / SmolLM3) to path as llama.cpp's convert_hf_to_gguf.py does: its tensor
    names and keys, each layer's experts as one 3D tensor, q/k rows (and biases) permuted for Mixtral,
    Granite and SmolLM3, Phi-3's longrope factors as tensors, 1 added to Gemma's norm weights, size-1
    dimensions squeezed, norms and routers in F32, other matrices in `matrix_type` where their rows
    fill whole blocks (else F32, as the converter falls back). Returns {HF state_dict name: weight as
    the file holds it, dequantized, in transformers' terms} for a reference model. `fields` (key ->
    int or float) adds metadata, `tokens` a vocabulary."""
    import gguf
    from gguf import quants

    cfg = model.config
    mt = cfg.model_type
    arch = FAMILY_ARCH[mt]
    _check_llama_cpp_reads(cfg)
    matrix_type = matrix_type or gguf.GGMLQuantizationType.F32
    model_arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    names = gguf.get_tensor_name_map(model_arch, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    _family_metadata(w, cfg)
    for key, value in (fields or {}).items():
        (w.add_uint32 if isinstance(value, int) else w.add_float32)(key, value)
    if tokens:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
    stored, expert_parts = {}, {}
    block = gguf.GGML_QUANT_SIZES[matrix_type][0]
    for name, data in _family_tensors(model):
        if name == "lm_head.weight" and (cfg.tie_word_embeddings or mt in ("gemma", "gemma2")):
            continue  # tied (Gemma and Gemma 2 files never hold an output matrix)
        if mt.startswith("gemma") and name.endswith("norm.weight"):
            data = data + 1
        heads = _permuted_heads(cfg, name)
        if heads:
            data = permute(data, heads)
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname, f"no GGUF name for {name}"
        shape = data.shape
        data = np.ascontiguousarray(data.squeeze())
        float_only = data.ndim < 2 or ".ffn_gate_inp." in gname or data.shape[-1] % block != 0
        if matrix_type != gguf.GGMLQuantizationType.F32 and not float_only:
            raw = quants.quantize(data, matrix_type)
            w.add_tensor(gname, raw, raw_dtype=matrix_type)
            data = quants.dequantize(raw, matrix_type)
        else:
            w.add_tensor(gname, data.astype(np.float32))
        data = data.reshape(shape)
        if heads:
            data = permute_back(data, heads)
        if mt.startswith("gemma") and name.endswith("norm.weight"):
            data = data - 1
        if ".experts." in name:
            expert_parts[name] = data
        else:
            stored[name] = data
    for name in list(expert_parts):  # back to transformers' fused expert tensors
        if name.endswith("gate_proj.weight"):
            base = name.removesuffix("gate_proj.weight")
            stored[base + "gate_up_proj"] = np.concatenate([expert_parts[name], expert_parts[base + "up_proj.weight"]], 1)
        elif name.endswith("down_proj.weight"):
            stored[name.removesuffix(".weight")] = expert_parts[name]
    for gname, data in _extra_tensors(cfg):
        w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored
