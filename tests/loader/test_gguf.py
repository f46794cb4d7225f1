"""GGUF models read by the C++ runtime: a transformers Llama written as GGUF (as llama.cpp's
converter writes it) generates what transformers generates from the same stored weights, in
float32 and in quantized formats; corrupt files are clear errors."""

from __future__ import annotations

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

from tests.helpers.gguf_files import write_llama_gguf  # noqa: E402
from tests.helpers.models import build_model, check_prompt_logprobs, greedy, hf_logprobs, make_llm  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    # head_dim 32 and hidden 64: rows and columns the quantized kernels tile unevenly
    return build_model(tmp_path_factory.mktemp("hf"), "llama", seed=3, hidden_size=64, intermediate_size=96,
                       num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)


def reference(built, stored):
    import torch

    model = built.model
    with torch.no_grad():
        for name, value in stored.items():
            model.state_dict()[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return model


# Quantized: activations are rounded to int8 per block of 32 (as llama.cpp does), ~1% of a logit.
@pytest.mark.parametrize("qtype, tol", [(Q.F32, 1e-3), (Q.Q8_0, 0.2), (Q.Q4_0, 0.2), (Q.Q4_1, 0.2)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_gguf_matches_transformers(llama, tmp_path, qtype, tol):
    import copy

    path = tmp_path / f"tiny-{qtype.name}.gguf"
    built = copy.copy(llama)
    built.model = copy.deepcopy(llama.model)
    stored = write_llama_gguf(built.model, path, qtype)
    ref_model = reference(built, stored)
    llm = make_llm(str(path), skip_tokenizer_init=True)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(3, 256, size=20)]
    out = llm.generate([{"prompt_token_ids": prompt}], greedy(max_tokens=6, prompt_logprobs=0), use_tqdm=False)[0]
    ref = hf_logprobs(ref_model, prompt)
    check_prompt_logprobs(out, ref, tol=tol)
    if qtype == Q.F32:  # exact weights: the greedy continuation is transformers'
        ids = list(prompt)
        for tok in out.outputs[0].token_ids:
            assert tok == int(hf_logprobs(ref_model, ids)[-1].argmax())
            ids.append(tok)
    info = llm.engine.model_info()
    assert info.vocab_size == 256 and info.eos_token_ids == [1] and info.max_model_len == 256


def _header(version=3, tensors=((b"w", (32, 2), 0, 0),), kv=()) -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, value in kv:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", len(value)) + value
    for name, dims, ttype, offset in tensors:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset)
    return out


@pytest.mark.parametrize("content, message", [
    (b"GGML" + b"\0" * 60, "bad magic"),
    (_header(version=1), "version 1"),
    (_header()[:30], "truncated"),
    (_header(tensors=((b"w", (256, 2), 16, 0),)), "IQ2_XXS|ggml type"),  # a type cserve cannot read
    (_header() + b"\0" * 8, "outside the file"),
    (_header(kv=((b"general.architecture", b"gpt9"),)) + b"\0" * 512, "architecture 'gpt9'"),
])
def test_bad_files_are_clear_errors(tmp_path, content, message):
    from cserve import _core

    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    config = _core.EngineConfig()
    config.model = str(path)
    with pytest.raises((ValueError, NotImplementedError, FileNotFoundError), match=message):
        _core.Engine(config)


def test_metadata_binding(llama, tmp_path):
    from cserve import _core

    path = tmp_path / "meta.gguf"
    write_llama_gguf(llama.model, path, Q.F32, tokens=[f"t{i}" for i in range(256)])
    meta = _core.gguf_metadata(str(path))
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["tokenizer.ggml.tokens"][:2] == ["t0", "t1"]
    assert isinstance(meta["llama.attention.layer_norm_rms_epsilon"], float)


def test_version_2_files_load(llama, tmp_path):
    """GGUF v2 has v3's layout for little-endian files: the same model loads from either."""
    path = tmp_path / "v2.gguf"
    write_llama_gguf(llama.model, path, Q.F32)
    data = bytearray(path.read_bytes())
    assert data[4:8] == (3).to_bytes(4, "little")
    data[4:8] = (2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    out = make_llm(str(path), skip_tokenizer_init=True).generate(
        [{"prompt_token_ids": [5, 6, 7, 8]}], greedy(max_tokens=3, prompt_logprobs=None), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3
