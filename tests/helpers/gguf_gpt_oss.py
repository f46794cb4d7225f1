"""gpt-oss GGUF files written in tests as llama.cpp's convert_hf_to_gguf.py writes them: architecture
"gpt-oss", the experts' interleaved gate_up_proj split into ffn_gate_exps / ffn_up_exps (and their
biases), every expert matrix [experts][rows][cols] in MXFP4 (gguf-py's reference quantizer), the
attention sinks as attn_sinks.weight, the MLP's input norm as post_attention_norm, other tensors F32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers.gguf_files import _shape_metadata


def _converter_tensors(model):
    """(HF name as the converter maps it, array, whether it is an expert matrix)."""
    for name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy()
        base = name.rsplit(".", 1)[0] + "."
        if name.endswith("experts.gate_up_proj"):  # x @ W [E][H][2I] -> [E][2I][H] rows, interleaved
            rows = np.swapaxes(data, 1, 2)
            yield base + "gate_proj.weight", rows[:, ::2], True
            yield base + "up_proj.weight", rows[:, 1::2], True
        elif name.endswith("experts.gate_up_proj_bias"):
            yield base + "gate_proj.bias", data[:, ::2], False
            yield base + "up_proj.bias", data[:, 1::2], False
        elif name.endswith("experts.down_proj"):
            yield base + "down_proj.weight", np.swapaxes(data, 1, 2), True
        elif name.endswith("experts.down_proj_bias"):
            yield base + "down_proj.bias", data, False
        elif name.endswith("self_attn.sinks"):
            yield name + ".weight", data, False
        else:
            yield name, data, False


def write_gpt_oss_gguf(model, path: Path, nan_scale: bool = False) -> dict:
    """Writes `model` (a transformers GptOssForCausalLM) to path; returns {HF state_dict name: weight
    as the file holds it, dequantized, in transformers' layout} for a reference model. nan_scale:
    one E8M0 scale of layer 1's down experts is 255 (NaN)."""
    import gguf
    from gguf import quants

    cfg = model.config
    mx = gguf.GGMLQuantizationType.MXFP4
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT_OSS, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), "gpt-oss")
    rope = cfg.rope_parameters
    _shape_metadata(w, cfg, rope["rope_theta"])
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_expert_count(cfg.num_local_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_sliding_window(cfg.sliding_window)
    w.add_expert_feed_forward_length(cfg.intermediate_size)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    stored = {}
    for name, data, expert in _converter_tensors(model):
        gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gname, f"no GGUF name for {name}"
        data = np.ascontiguousarray(data)
        if expert:
            raw = quants.quantize(data, mx)
            if nan_scale and gname == "blk.1.ffn_down_exps.weight":
                raw[2, 5, 0] = 255  # the first block's E8M0 byte of expert 2, row 5
            w.add_tensor(gname, raw, raw_dtype=mx)
            with np.errstate(over="ignore"):  # a NaN scale reads as 2^128 there
                data = quants.dequantize(raw, mx).reshape(data.shape)
        else:
            w.add_tensor(gname, data.astype(np.float32))
        stored[name] = data
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return _as_transformers(stored)


def _as_transformers(stored: dict) -> dict:
    """The converter's names and layouts back to transformers' gpt-oss tensors."""
    out = {}
    for name, data in stored.items():
        base = name.rsplit(".", 2)[0] + "."
        if name.endswith("experts.gate_proj.weight"):
            rows = np.empty((data.shape[0], 2 * data.shape[1], data.shape[2]), np.float32)
            rows[:, ::2], rows[:, 1::2] = data, stored[base + "up_proj.weight"]
            out[base + "gate_up_proj"] = np.swapaxes(rows, 1, 2)
        elif name.endswith("experts.gate_proj.bias"):
            bias = np.empty((data.shape[0], 2 * data.shape[1]), np.float32)
            bias[:, ::2], bias[:, 1::2] = data, stored[base + "up_proj.bias"]
            out[base + "gate_up_proj_bias"] = bias
        elif name.endswith("experts.down_proj.weight"):
            out[base + "down_proj"] = np.swapaxes(data, 1, 2)
        elif name.endswith("experts.down_proj.bias"):
            out[base + "down_proj_bias"] = data
        elif name.endswith("self_attn.sinks.weight"):
            out[name.removesuffix(".weight")] = data
        elif ".experts.up_proj." not in name:
            out[name] = data
    return out
