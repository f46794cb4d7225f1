"""Bad model directories and bad requests raise Python exceptions that name the culprit;
the process never crashes and a working engine stays usable."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from cserve import LLM, SamplingParams, _core
from tests.helpers.models import assert_same_completions, make_llm, with_config

ST = "model.safetensors"


@pytest.fixture(scope="module")
def built(model_zoo):
    return model_zoo.get("llama")


def _copy(built, tmp_path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(built.path, d)
    return d


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / ST))


def _save(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path / ST), metadata={"format": "pt"})


def _engine(path, **kw):
    c = _core.EngineConfig()
    c.model = str(path)
    c.dtype = "float32"
    c.max_model_len = 64
    c.num_threads = 1
    for k, v in kw.items():
        setattr(c, k, v)
    return _core.Engine(c)


# ---- the model directory ----


def test_missing_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        LLM(model=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _engine(tmp_path / "nowhere")


def test_missing_config_json(built, tmp_path):
    d = _copy(built, tmp_path)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        make_llm(str(d))


def test_corrupt_config_json(built, tmp_path):
    d = _copy(built, tmp_path)
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,')
    with pytest.raises(ValueError, match="config.json"):
        make_llm(str(d))


def test_unknown_architecture(tmp_path):
    from transformers import GPT2Config

    d = tmp_path / "gpt2"
    d.mkdir()
    cfg = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=128).to_dict()
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NotImplementedError, match="GPT2LMHeadModel"):
        make_llm(str(d))


@pytest.mark.parametrize("changes,exc,match", [
    (dict(hidden_size=None), ValueError, "hidden_size"),
    (dict(vocab_size=-3), ValueError, "vocab_size"),
    (dict(num_hidden_layers="two"), ValueError, "num_hidden_layers"),
    (dict(num_key_value_heads=3), ValueError, "num_key_value_heads"),
    (dict(rope_parameters={"rope_type": "mrope", "rope_theta": 10000.0}), NotImplementedError, "mrope"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0}), ValueError, "short_factor"),
    (dict(hidden_act="gelu"), NotImplementedError, "gelu"),
    (dict(architectures=["FalconForCausalLM"], model_type="falcon"), NotImplementedError, "FalconForCausalLM"),
], ids=["missing-field", "negative", "wrong-type", "kv-heads", "rope-type", "longrope-factors", "activation",
        "falcon"])
def test_bad_config_fields(built, tmp_path, changes, exc, match):
    d = with_config(built, tmp_path / "m", **changes)
    with pytest.raises(exc, match=match):
        make_llm(d)


def test_no_weights(built, tmp_path):
    d = _copy(built, tmp_path)
    (d / ST).unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        make_llm(str(d))
    # load_format="dummy" needs no weights at all.
    llm = make_llm(str(d), load_format="dummy")
    (out,) = llm.generate({"prompt_token_ids": [3, 4, 5]}, SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 4


def test_truncated_safetensors_header(built, tmp_path):
    d = _copy(built, tmp_path)
    data = (d / ST).read_bytes()
    (d / ST).write_bytes(data[:40])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        make_llm(str(d))
    (d / ST).write_bytes(data[:5])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        make_llm(str(d))
    (d / ST).write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        make_llm(str(d))


def test_truncated_safetensors_data(built, tmp_path):
    d = _copy(built, tmp_path)
    data = (d / ST).read_bytes()
    (d / ST).write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor .*data_offsets"):
        make_llm(str(d))


def test_corrupt_safetensors_json_header(built, tmp_path):
    d = _copy(built, tmp_path)
    header = b'{"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]'  # no closing brace
    (d / ST).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 256)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        make_llm(str(d))
    header = b'["not", "an", "object"]'
    (d / ST).write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        make_llm(str(d))


def test_safetensors_size_mismatch(built, tmp_path):
    d = _copy(built, tmp_path)
    header = json.dumps({"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 128]}}).encode()
    (d / ST).write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 128)
    with pytest.raises(ValueError, match="model.norm.weight"):
        make_llm(str(d))


def test_tensor_of_wrong_shape(built, tmp_path):
    d = _copy(built, tmp_path)
    t = _tensors(d)
    name = "model.layers.1.mlp.gate_proj.weight"
    t[name] = np.ascontiguousarray(t[name].T)
    _save(d, t)
    with pytest.raises(ValueError, match=name.replace(".", r"\.") + r".*shape"):
        make_llm(str(d))


@pytest.mark.parametrize("np_dtype,st_name", [(np.int8, "I8"), (np.float64, "F64"), (np.int32, "I32")])
def test_unsupported_tensor_dtype(built, tmp_path, np_dtype, st_name):
    d = _copy(built, tmp_path)
    t = _tensors(d)
    name = "model.layers.0.self_attn.k_proj.weight"
    t[name] = t[name].astype(np_dtype)
    _save(d, t)
    with pytest.raises(NotImplementedError, match=name.replace(".", r"\.") + ".*" + st_name):
        make_llm(str(d))


def test_missing_tensor(built, tmp_path):
    d = _copy(built, tmp_path)
    t = _tensors(d)
    name = "model.layers.1.post_attention_layernorm.weight"
    del t[name]
    _save(d, t)
    with pytest.raises((FileNotFoundError, ValueError, KeyError), match=name.replace(".", r"\.")):
        make_llm(str(d))


def test_sharded_checkpoint(built, tmp_path):
    """A model.safetensors.index.json with two shards loads and matches the single file."""
    from safetensors.numpy import save_file

    d = _copy(built, tmp_path)
    t = _tensors(d)
    (d / ST).unlink()
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for file, ns in shards.items():
        save_file({n: t[n] for n in ns}, str(d / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in ns})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    prompt = [5, 9, 13, 21, 34]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, prompt_logprobs=0)
    (a,) = make_llm(str(d)).generate({"prompt_token_ids": prompt}, sp)
    (b,) = make_llm(built.path).generate({"prompt_token_ids": prompt}, sp)
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    # An index naming a shard that does not exist.
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        make_llm(str(d))


def test_unaligned_safetensors_data(built, tmp_path):
    """A header whose length is not padded to 8 bytes leaves every tensor's data misaligned:
    the file still loads (the loader copies such tensors) and gives the same completions."""
    d = _copy(built, tmp_path)
    data = (d / ST).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8:8 + n].rstrip(b" ")
    header += b" " * ((1 - len(header)) % 8)  # data starts at 1 mod 8
    (d / ST).write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])
    prompt = [5, 9, 13, 21, 34]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2)
    want = make_llm(built.path).generate({"prompt_token_ids": prompt}, sp)
    got = make_llm(str(d)).generate({"prompt_token_ids": prompt}, sp)
    assert_same_completions(want, got, tol=1e-6)


# ---- engine options ----


@pytest.mark.parametrize("kw,exc,match", [
    (dict(max_model_len=100000), ValueError, "max_model_len"),
    (dict(scheduling_policy="lifo"), ValueError, "scheduling_policy"),
    (dict(dtype="int8"), ValueError, "int8"),
    (dict(load_format="tensorizer"), NotImplementedError, "tensorizer"),
    (dict(load_format="gguf"), ValueError, "needs a .gguf file"),
    (dict(prefix_caching_hash_algo="md5"), ValueError, "md5"),
    (dict(block_size=0), ValueError, "block_size"),
    (dict(max_num_seqs=0), ValueError, "max_num_seqs"),
    (dict(enable_chunked_prefill=False, max_num_batched_tokens=16), ValueError, "max_num_batched_tokens"),
    (dict(no_such_option=1), TypeError, "no_such_option"),
], ids=["max_model_len", "policy", "dtype", "load_format", "gguf_dir", "hash", "block_size", "max_num_seqs", "budget", "kwarg"])
def test_bad_engine_options(built, kw, exc, match):
    with pytest.raises(exc, match=match):
        make_llm(built.path, **kw)


# ---- requests ----


@pytest.fixture(scope="module")
def llm(built):
    return make_llm(built.path, max_model_len=32, max_logprobs=5)


def test_prompt_too_long(llm):
    with pytest.raises(ValueError, match="maximum context length is 32"):
        llm.generate({"prompt_token_ids": list(range(3, 40))}, SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate({"prompt_token_ids": list(range(3, 35))}, SamplingParams(max_tokens=2))  # exactly 32
    (out,) = llm.generate({"prompt_token_ids": list(range(3, 34))}, SamplingParams(max_tokens=5, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 1 and out.outputs[0].finish_reason == "length"


@pytest.mark.parametrize("prompt", [[1, 256, 3], [-1, 4], [10**6]])
def test_token_out_of_vocab(llm, prompt):
    with pytest.raises(ValueError, match="out of vocab"):
        llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=2))


def test_empty_prompt(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate({"prompt_token_ids": []}, SamplingParams(max_tokens=2))


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-0.5), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(n=0), "n must be"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(min_tokens=5, max_tokens=3), "min_tokens"),
    (dict(presence_penalty=3.0), "presence_penalty"),
    (dict(frequency_penalty=-2.5), "frequency_penalty"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(logprobs=6), "logprobs"),
    (dict(prompt_logprobs=9), "prompt logprobs"),
    (dict(stop_token_ids=[300]), "stop_token_ids"),
    (dict(logit_bias={999: 1.0}), "logit_bias"),
    (dict(logit_bias={5: float("inf")}), "logit_bias"),
    (dict(allowed_token_ids=[1, 256]), "allowed_token_ids"),
])
def test_bad_sampling_params(llm, kw, match):
    with pytest.raises(ValueError, match=match):
        llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(**kw))


def test_bad_request_in_a_batch_loses_nothing(llm, built):
    good = {"prompt_token_ids": [5, 6, 7, 8]}
    sp = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    (before,) = llm.generate(good, sp)
    with pytest.raises(ValueError):
        llm.generate([good, {"prompt_token_ids": [999]}, good], sp)
    stats = llm.engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert not llm.engine.has_unfinished_requests()
    outs = llm.generate([good, good], sp)
    assert [o.outputs[0].token_ids for o in outs] == [before.outputs[0].token_ids] * 2
    assert llm.engine.stats().num_free_blocks == llm.model_info.num_kv_blocks


def test_bad_prompt_types(llm):
    with pytest.raises(TypeError):
        llm.generate([123], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="tokenizer"):
        llm.generate("text needs a tokenizer", SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="prompt_token_ids"):
        llm.generate({"text": "x"}, SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="same"):
        llm.generate([{"prompt_token_ids": [1]}] * 2, [SamplingParams()] * 3)


@pytest.mark.parametrize("what", ["safetensors-dtype", "config-architecture"])
def test_invalid_utf8_in_files_still_names_the_file(built, tmp_path, what):
    d = _copy(built, tmp_path)
    if what == "safetensors-dtype":
        data = bytearray((d / ST).read_bytes())
        j = data.index(b'"F32"')
        data[j + 2] = 0xFF  # "F\xff2"
        (d / ST).write_bytes(bytes(data))
        name = "model.safetensors"
    else:
        (d / "config.json").write_bytes(b'{"architectures": ["Llama\xffForCausalLM"], "model_type": "x"}')
        name = "config.json"
    with pytest.raises((ValueError, NotImplementedError)) as info:
        make_llm(str(d))
    assert name in str(info.value)


def test_deeply_nested_json_is_an_error_not_a_crash(built, tmp_path):
    d = _copy(built, tmp_path)
    (d / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="config.json"):
        make_llm(str(d))
    header = b"[" * 100000 + b"]" * 100000
    (d / "config.json").write_text(json.dumps(built.config))
    (d / ST).write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match=r"model\.safetensors"):
        make_llm(str(d))
