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
                     fields: Optional[dict] = None) -> dict:
    """Writes `model` (a transformers Llama) to path; returns {hf name: weight as stored, dequantized,
    un-permuted} so a reference model can load exactly what the file holds. `fields` (GGUFWriter
    method name -> value) adds metadata, a whole tokenizer for one; its bos/eos ids replace the
    default ones (0 and 1)."""
    import gguf
    from gguf import quants

    cfg = model.config
    matrix_type = matrix_type or gguf.GGMLQuantizationType.F32
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"])
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
