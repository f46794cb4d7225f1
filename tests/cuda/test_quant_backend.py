"""Quantized weights on the CUDA backend (kept as codes, cuda/quant) against the same weights
dequantized to bf16 (CSERVE_CUDA_DEQUANTIZE_WEIGHTS=1) and against the CPU backend: one linear
(GGUF block types, bias, act-order, both batch paths, the packed weight's embedding rows), then a
tiny GGUF and a tiny AWQ / GPTQ act-order model's prompt logprobs, eager and in CUDA graphs.
Skipped without a GPU."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cserve import _core
from cserve._core import testing as T
from tests.helpers.models import build_model, greedy, make_llm

if _core.resolve_device("auto")[0] != "cuda":
    pytest.skip("no CUDA device (or no CUDA backend) here: " + _core.resolve_device("auto")[1],
                allow_module_level=True)

DEQUANTIZE = "CSERVE_CUDA_DEQUANTIZE_WEIGHTS"

# ggml type id: (values per block, bytes per block, [(byte offset, "f16" | "f32") of each scale]).
# QB4 / QB8 are cserve's own rows (f32 d and m, then the codes), which AWQ / GPTQ / fp8 become.
BLOCKS = {
    "Q4_0": (2, 32, 18, [(0, "f16")]),
    "Q4_1": (3, 32, 20, [(0, "f16"), (2, "f16")]),
    "Q8_0": (8, 32, 34, [(0, "f16")]),
    "Q4_K": (12, 256, 144, [(0, "f16"), (2, "f16")]),
    "Q6_K": (14, 256, 210, [(208, "f16")]),
    "QB4": (0x10004, 32, 24, [(0, "f32"), (4, "f32")]),
    "QB8": (0x10008, 32, 40, [(0, "f32"), (4, "f32")]),
}


def random_weight(name: str, n: int, k: int, rng) -> tuple[int, bytes, np.ndarray]:
    """(type id, raw rows of random codes with sane scales, the weight they hold as f32)."""
    type_id, elems, size, scales = BLOCKS[name]
    blocks = rng.integers(0, 256, size=(n * k // elems, size), dtype=np.uint8)
    for offset, kind in scales:
        values = rng.uniform(0.001, 0.02, blocks.shape[0]) * rng.choice([-1, 1], blocks.shape[0])
        width = 2 if kind == "f16" else 4
        blocks[:, offset:offset + width] = values.astype(np.float16 if kind == "f16" else np.float32) \
            .view(np.uint8).reshape(-1, width)
    raw = blocks.tobytes()
    if not name.startswith("QB"):
        return type_id, raw, T.dequantize(type_id, raw, n, k)
    d = blocks[:, 0:4].copy().view(np.float32)
    m = blocks[:, 4:8].copy().view(np.float32)
    if name == "QB8":
        u = blocks[:, 8:40].astype(np.float32)
    else:  # byte j: value j low nibble, value j + 16 high nibble
        u = np.concatenate([blocks[:, 8:24] & 15, blocks[:, 8:24] >> 4], axis=1).astype(np.float32)
    return type_id, raw, (d * u + m).reshape(n, k)


def _linear(monkeypatch, dequantize: bool, *args, **kwargs):
    if dequantize:
        monkeypatch.setenv(DEQUANTIZE, "1")
    else:
        monkeypatch.delenv(DEQUANTIZE, raising=False)
    return T.backend_quant_linear("cuda", *args, **kwargs)


@pytest.mark.parametrize("m", [1, 5, 40])  # GEMV up to 32 rows, bf16 tiles above
@pytest.mark.parametrize("qtype", list(BLOCKS))
def test_linear_matches_the_dequantized_path(monkeypatch, qtype, m):
    rng = np.random.default_rng(BLOCKS[qtype][0] * 10 + m)
    n, k = 70, 512
    type_id, raw, w = random_weight(qtype, n, k, rng)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    order = [int(i) for i in rng.permutation(k)]
    ids = [0, 69, 3]
    # What the packed form holds (the CPU backend's rows: the same conversion; Q6_K is requantized
    # to 8-bit blocks, every other type is held exactly).
    _, held = T.backend_quant_linear("cpu", type_id, raw, n, k, x[:1], None, None, list(range(n)))
    exact_form = qtype != "Q6_K"
    if exact_form:
        np.testing.assert_array_equal(held, w)
    for k_order in (None, order):
        got, rows = _linear(monkeypatch, False, type_id, raw, n, k, x, bias, k_order, ids)
        bf16, _ = _linear(monkeypatch, True, type_id, raw, n, k, x, bias, k_order, ids)

        def natural(v):
            if k_order is None:
                return v
            out = np.empty_like(v)
            out[:, k_order] = v
            return out

        scale = np.abs(x).astype(np.float64) @ np.abs(natural(w)).T
        want = x.astype(np.float64) @ natural(held).T + bias
        # The bf16 path rounds x and W to bf16 (2^-8 each), from the file's weight.
        assert (np.abs(bf16 - (x.astype(np.float64) @ natural(w).T + bias)) <= 2 * 2.0**-8 * scale + 1e-4).all()
        if m <= 32:  # the GEMV kernel: f32 throughout
            assert (np.abs(got - want) <= 1e-5 * scale + 1e-5).all()
        else:  # bf16 tiles: rounded as the bf16 path rounds
            assert (np.abs(got - want) <= 2 * 2.0**-8 * scale + 1e-4).all()
            if exact_form:
                assert (np.abs(got - bf16) <= 1e-4 * scale + 1e-5).all()
        # Tied embeddings: rows of the packed weight, f32, in the natural column order.
        np.testing.assert_allclose(rows, natural(held)[ids], rtol=1e-6, atol=1e-6)


def _prompt_logprobs(path: str, prompt: list[int], **options) -> tuple[np.ndarray, list[int]]:
    llm = make_llm(path, skip_tokenizer_init=True, **options)
    (out,) = llm.generate({"prompt_token_ids": prompt}, greedy(max_tokens=8, prompt_logprobs=0), use_tqdm=False)
    lps = np.array([out.prompt_logprobs[i][prompt[i]].logprob for i in range(1, len(prompt))])
    return lps, list(out.outputs[0].token_ids)


def _compare_devices(monkeypatch, path: str):
    # 60 prompt tokens: the prefill takes the tile path, the decode steps the GEMV kernel.
    prompt = [int(t) for t in np.random.default_rng(7).integers(3, 256, size=60)]
    monkeypatch.delenv(DEQUANTIZE, raising=False)
    gpu, gpu_tokens = _prompt_logprobs(path, prompt, device="cuda")
    eager, eager_tokens = _prompt_logprobs(path, prompt, device="cuda", enforce_eager=True)
    cpu, _ = _prompt_logprobs(path, prompt, device="cpu")
    monkeypatch.setenv(DEQUANTIZE, "1")
    bf16, _ = _prompt_logprobs(path, prompt, device="cuda")
    # The CPU rounds activations to int8 per block of 32 (up to ~0.2 of a logprob on these models);
    # the GPU's prefill rounds x and W to bf16, as the dequantized path does.
    err = np.abs(gpu - cpu)
    assert err.max() < 0.35 and err.mean() < 0.08, (err.max(), err.mean())
    err = np.abs(gpu - bf16)
    assert err.max() < 0.05, err.max()
    np.testing.assert_allclose(gpu, eager, atol=1e-4)
    assert gpu_tokens == eager_tokens  # graph replays (GEMV in the graph) equal eager steps


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0"])
def test_gguf_model_matches_the_cpu_backend(monkeypatch, tmp_path, qtype):
    gguf = pytest.importorskip("gguf")
    from tests.helpers.gguf_files import write_llama_gguf

    # Tied embeddings: the quantized token_embd is the LM head and the embedding table (row gather).
    built = build_model(tmp_path / "hf", "llama", seed=3, hidden_size=128, intermediate_size=256,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path / f"tiny-{qtype}.gguf"
    write_llama_gguf(copy.deepcopy(built.model), path, gguf.GGMLQuantizationType[qtype])
    _compare_devices(monkeypatch, str(path))


@pytest.mark.parametrize("fmt, act_order", [("awq", False), ("gptq", True)], ids=["awq", "gptq-act-order"])
def test_checkpoint_model_matches_the_cpu_backend(monkeypatch, tmp_path, fmt, act_order):
    from tests.model.test_quantized_checkpoints import HIDDEN, INTER, _quantize_model

    built = build_model(tmp_path / "hf", "llama", seed=5, hidden_size=HIDDEN, intermediate_size=INTER,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    path, _ = _quantize_model(built, tmp_path / fmt, fmt, group=32, act_order=act_order)
    _compare_devices(monkeypatch, path)
