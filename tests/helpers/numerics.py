"""NumPy references for the CPU kernels (no torch, so kernel tests start fast in subprocesses)."""

from __future__ import annotations

from typing import Optional

import numpy as np


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 -> float32, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def round_f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


# fp8 KV cache formats: mantissa bits, exponent bias, largest finite value.
FP8 = {"fp8_e4m3": (3, 7, 448.0), "fp8_e5m2": (2, 15, 57344.0)}


def round_fp8(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 -> fp8 -> float32: nearest even, saturating to the largest finite value."""
    m_bits, bias, largest = FP8[dtype]
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), largest)
    binade = np.maximum(np.floor(np.log2(np.where(a > 0, a, 1.0))), 1 - bias)  # subnormals share the lowest
    quantum = np.ldexp(1.0, (binade - m_bits).astype(np.int64))
    return (np.sign(x) * np.round(a / quantum) * quantum).astype(np.float32)  # np.round: half to even


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype in FP8:
        return round_fp8(x, dtype)
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32)
    if dtype == "bfloat16":
        return round_bf16(x)
    if dtype == "float16":
        return round_f16(x)
    raise ValueError(dtype)


# Unit roundoff of each storage dtype.
UNIT = {"float32": 2.0**-24, "bfloat16": 2.0**-8, "float16": 2.0**-11}


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    return (x64 / np.sqrt((x64 * x64).mean(-1, keepdims=True) + eps) * w).astype(np.float32)


def silu_mul(gu: np.ndarray) -> np.ndarray:
    inter = gu.shape[1] // 2
    g, u = gu[:, :inter].astype(np.float64), gu[:, inter:].astype(np.float64)
    return (g / (1 + np.exp(-g)) * u).astype(np.float32)


def gelu_tanh_mul(gu: np.ndarray) -> np.ndarray:
    """GeGLU with PyTorch's tanh GELU: 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) * u."""
    inter = gu.shape[1] // 2
    g, u = gu[:, :inter].astype(np.float64), gu[:, inter:].astype(np.float64)
    return (0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3))) * u).astype(np.float32)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    return (cap * np.tanh(x.astype(np.float64) / cap)).astype(np.float32)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rotary_dim: int) -> np.ndarray:
    """Rotate-half RoPE on the first rotary_dim dims of x[T, H, D]; cos/sin [T, rotary_dim/2]."""
    out = x.astype(np.float64).copy()
    half = rotary_dim // 2
    x1 = x[:, :, :half].astype(np.float64)
    x2 = x[:, :, half:rotary_dim].astype(np.float64)
    c, s = cos[:, None, :], sin[:, None, :]
    out[:, :, :half] = x1 * c - x2 * s
    out[:, :, half:rotary_dim] = x2 * c + x1 * s
    return out.astype(np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, window: int,
              softcap: float = 0.0, sinks: Optional[np.ndarray] = None) -> np.ndarray:
    """The last nq tokens of a sequence attending causally over k/v [len, KVH, D]; -> [nq, H*D].
    softcap > 0: scaled scores s become softcap * tanh(s / softcap). sinks: per head a logit in
    the softmax's denominator that attends to nothing."""
    nq, nh, d = q.shape
    length, nkv, _ = k.shape
    group = nh // nkv
    out = np.zeros((nq, nh, d))
    for j in range(nq):
        pos = length - nq + j
        lo = max(0, pos - window + 1) if window > 0 else 0
        for h in range(nh):
            kv = h // group
            s = (k[lo:pos + 1, kv].astype(np.float64) @ q[j, h].astype(np.float64)) * scale
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            top = s.max() if sinks is None else max(s.max(), float(sinks[h]))
            p = np.exp(s - top)
            p /= p.sum() + (0.0 if sinks is None else np.exp(float(sinks[h]) - top))
            out[j, h] = p @ v[lo:pos + 1, kv].astype(np.float64)
    return out.reshape(nq, nh * d).astype(np.float32)


def attention_inputs(case: tuple) -> tuple:
    """Random q, k, v for one sequence of a paged-attention case (nq, heads, kv heads, head_dim,
    context, block size, window), its blocks scattered through a larger cache in shuffled
    order, and the usual scale: (q, k, v, block_ids, scale)."""
    nq, nh, nkv, d, length, bs, _ = case
    rng = np.random.default_rng(nq * 7 + length)
    q = rng.standard_normal((nq, nh, d)).astype(np.float32)
    k = rng.standard_normal((length, nkv, d)).astype(np.float32)
    v = rng.standard_normal((length, nkv, d)).astype(np.float32)
    num_blocks = (length + bs - 1) // bs
    block_ids = [int(b) for b in rng.permutation(num_blocks + 3)[:num_blocks]]
    return q, k, v, block_ids, float(1.0 / np.sqrt(d))
