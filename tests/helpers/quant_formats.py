"""Reference implementations of the quantized checkpoint formats cserve reads (AWQ GEMM, GPTQ v1,
compressed-tensors pack-quantized, fp8 block-wise / per-tensor): quantize a float weight, pack it
as the format's tools write it, unpack it, and dequantize it, in numpy / torch, independently of
cserve. Weights are [n][k] (out_features, in_features), as nn.Linear holds them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ's nibble order: nibble i holds column AWQ_ORDER[i]
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@dataclass
class IntQuant:
    """w[n][kk] = scales[g][n] * (codes[n][kk] - zeros[g][n]) with g = g_idx[kk]."""
    codes: np.ndarray   # [n][k] uint, below 2**bits
    scales: np.ndarray  # [groups][n] float16
    zeros: np.ndarray   # [groups][n] int (the true zero point, unsigned)
    g_idx: np.ndarray   # [k] int32

    def dequantize(self) -> np.ndarray:
        s = self.scales.astype(np.float32)[self.g_idx].T          # [n][k]
        z = self.zeros.astype(np.float32)[self.g_idx].T
        return (self.codes.astype(np.float32) - z) * s


def quantize_int(w: np.ndarray, group: int, bits: int = 4, sym: bool = False,
                 g_idx: Optional[np.ndarray] = None, zero_range=(0, None)) -> IntQuant:
    """Min-max quantization per group of input features (g_idx: group of each feature; by default
    consecutive groups of `group`). sym: zero at the midpoint 2**(bits-1)."""
    n, k = w.shape
    qmax = 2 ** bits - 1
    if g_idx is None:
        g_idx = (np.arange(k) // group).astype(np.int32)
    groups = int(g_idx.max()) + 1
    scales = np.zeros((groups, n), np.float16)
    zeros = np.zeros((groups, n), np.int64)
    codes = np.zeros((n, k), np.int64)
    zlo, zhi = zero_range[0], qmax if zero_range[1] is None else zero_range[1]
    for g in range(groups):
        cols = np.nonzero(g_idx == g)[0]
        block = w[:, cols]
        if sym:
            mid = 2 ** (bits - 1)
            s = (np.abs(block).max(axis=1) / (mid - 0.5)).astype(np.float16)
            z = np.full(n, mid)
        else:
            lo, hi = np.minimum(block.min(axis=1), 0), np.maximum(block.max(axis=1), 0)
            s = ((hi - lo) / qmax).astype(np.float16)
            z = np.clip(np.round(-lo / s.astype(np.float32)), zlo, zhi).astype(np.int64)
        sf = s.astype(np.float32)[:, None]
        codes[:, cols] = np.clip(np.round(block / sf) + z[:, None], 0, qmax)
        scales[g], zeros[g] = s, z
    return IntQuant(codes, scales, zeros, g_idx.astype(np.int32))


def act_order_g_idx(k: int, group: int, rng: np.random.Generator) -> np.ndarray:
    """GPTQ desc_act: features taken in a permuted order, each run of `group` of them one group."""
    perm = rng.permutation(k)
    g_idx = np.zeros(k, np.int32)
    g_idx[perm] = np.arange(k) // group
    return g_idx


# ---- packing: each format's layout of the codes and zeros in int32 words ----

def pack_along_last(values: np.ndarray, bits: int, order=None) -> np.ndarray:
    per = 32 // bits
    v = values.astype(np.uint32).reshape(*values.shape[:-1], -1, per)
    out = np.zeros(v.shape[:-1], np.uint32)
    for i in range(per):
        out |= v[..., order[i] if order else i] << np.uint32(bits * i)
    return out.view(np.int32)


def unpack_along_last(words: np.ndarray, bits: int, order=None) -> np.ndarray:
    per = 32 // bits
    w = words.view(np.uint32)
    out = np.zeros((*w.shape, per), np.int64)
    for i in range(per):
        out[..., order[i] if order else i] = (w >> np.uint32(bits * i)) & np.uint32(2 ** bits - 1)
    return out.reshape(*w.shape[:-1], -1)


def awq_tensors(q: IntQuant) -> dict:
    return {"qweight": pack_along_last(q.codes.T, 4, AWQ_ORDER),          # [k][n / 8]
            "qzeros": pack_along_last(q.zeros, 4, AWQ_ORDER),             # [groups][n / 8]
            "scales": q.scales}                                          # [groups][n]


def awq_unpack(t: dict) -> tuple:
    return unpack_along_last(t["qweight"], 4, AWQ_ORDER).T, unpack_along_last(t["qzeros"], 4, AWQ_ORDER)


def gptq_tensors(q: IntQuant, bits: int = 4) -> dict:
    """GPTQ v1: zeros stored minus one (read back plus one, as vLLM and transformers do)."""
    return {"qweight": _pack_rows(q.codes.T, bits),                                 # [k / per][n]
            "qzeros": pack_along_last((q.zeros - 1) & (2 ** bits - 1), bits),
            "scales": q.scales, "g_idx": q.g_idx}


def _pack_rows(codes_kn: np.ndarray, bits: int) -> np.ndarray:
    """[k][n] -> [k / per][n]: consecutive input features share a word (GPTQ's qweight)."""
    return np.ascontiguousarray(pack_along_last(np.ascontiguousarray(codes_kn.T), bits).T)


def gptq_unpack(t: dict, bits: int = 4) -> tuple:
    codes = unpack_along_last(np.ascontiguousarray(t["qweight"].T), bits)   # [n][k]
    zeros = (unpack_along_last(t["qzeros"], bits) + 1)
    return codes, zeros


def compressed_tensors_tensors(q: IntQuant, bits: int, sym: bool) -> dict:
    """pack-quantized: signed values q = code - 2**(bits-1) (zero point included) stored as q + 2**(bits-1),
    i.e. the unsigned code; scales [n][groups]; asymmetric zero points (signed: zero - 2**(bits-1))
    packed along n the same way. w = scale * (q - zero_point)."""
    import torch

    mid = 2 ** (bits - 1)
    out = {"weight_packed": pack_along_last(q.codes, bits),
           "weight_scale": torch.from_numpy(q.scales.T.astype(np.float32)).to(torch.bfloat16),
           "weight_shape": np.array(q.codes.shape, np.int64)}
    if not sym:
        zp = (q.zeros.T - mid)  # [n][groups], in [-mid, mid)
        out["weight_zero_point"] = np.ascontiguousarray(pack_along_last(np.ascontiguousarray(zp.T + mid), bits).T)
    return out


# ---- MXFP4 (gpt-oss's experts, as transformers' integrations/mxfp4.py reads them) ----

FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      np.float32)  # e2m1 code -> value (bit 3 the sign)


def quantize_mxfp4(w: np.ndarray):
    """w [..., rows, k] (k a multiple of 32) -> (FP4 codes [..., rows, k] uint8, E8M0 scales
    [..., rows, k / 32] uint8): per block of 32 the scale 2^(floor(log2(amax)) - 2) (the largest
    value lands in [4, 8)), each value the nearest e2m1 value (clipped at 6)."""
    blocks = w.reshape(*w.shape[:-1], w.shape[-1] // 32, 32).astype(np.float32)
    amax = np.abs(blocks).max(axis=-1)
    exp = np.where(amax > 0, np.floor(np.log2(np.maximum(amax, 1e-30))) - 2, 0).astype(np.int64)
    scales = (exp + 127).astype(np.uint8)
    scaled = blocks / np.exp2(exp.astype(np.float32))[..., None]
    codes = np.abs(scaled[..., None] - FP4_VALUES).argmin(axis=-1).astype(np.uint8)
    return codes.reshape(w.shape), scales


def dequantize_mxfp4(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    values = FP4_VALUES[codes].reshape(*scales.shape, 32)
    return (values * np.exp2(scales.astype(np.float32) - 127)[..., None]).reshape(codes.shape)


def pack_mxfp4(codes: np.ndarray) -> np.ndarray:
    """FP4 codes [..., rows, k] -> the checkpoint's _blocks [..., rows, k / 32, 16]: byte j of a
    block holds value 2j in its low nibble and 2j + 1 in its high one."""
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 32, 16, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def unpack_mxfp4(blocks: np.ndarray) -> np.ndarray:
    codes = np.stack([blocks & 0xF, blocks >> 4], axis=-1)
    return codes.reshape(*blocks.shape[:-2], blocks.shape[-2] * 32)


# ---- checkpoints ----

def write_checkpoint(path: Path, config: dict, tensors: dict, quantization_config: Optional[dict]) -> str:
    """config.json (with quantization_config) and model.safetensors of numpy arrays / torch tensors."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    as_torch = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))).contiguous()
                for k, v in tensors.items()}
    save_file(as_torch, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(config)
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def quantize_fp8(w: np.ndarray, block: Optional[tuple] = None, per_channel: bool = False):
    """float8_e4m3fn values and their f32 scales: one per block of block[0] x block[1], per output
    channel ([n][1]), or per tensor ([]); returns (fp8 torch tensor, scale torch tensor, dequantized)."""
    import torch

    t = torch.from_numpy(w)
    n, k = w.shape
    if block:
        bn, bk = block
        rows, cols = -(-n // bn), -(-k // bk)
        scale = torch.zeros(rows, cols)
        for i in range(rows):
            for j in range(cols):
                scale[i, j] = t[i * bn:(i + 1) * bn, j * bk:(j + 1) * bk].abs().max() / 448.0
        full = scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    elif per_channel:
        scale = t.abs().amax(dim=1, keepdim=True) / 448.0
        full = scale
    else:
        scale = t.abs().max() / 448.0
        full = scale
    q = (t / full).to(torch.float8_e4m3fn)
    return q, scale.float(), (q.float() * full).numpy()
