"""Model files are untrusted input: corrupt or hostile GGUF and safetensors headers (and
config.json fields) give one clear error naming the file and the tensor, never a crash, an
out-of-bounds read or a huge allocation.

The fuzz loops run in a subprocess (this file run as a module), so that a crash is a test
failure that names the mutation, not the end of the test run; the subprocess also caps its
address space, so that a huge allocation is a MemoryError, reported as a failure too."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
ST = "model.safetensors"
U64 = (1 << 64) - 1

# The fuzzed model: tiny (every mutation rewrites and reloads it), untied, GQA.
FUZZ_SPEC = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=1, vocab_size=64, tie_word_embeddings=False)
NUM_GGUF, NUM_SAFETENSORS, NUM_CONFIG = 3000, 2500, 1000
# What the fuzz loop may stop at on a slow machine (it then reports how many it ran).
BUDGET_S = 15.0


# ---- the files ----


@pytest.fixture(scope="module")
def fuzz_model(model_zoo):
    return model_zoo.custom("fuzz_llama", "llama", **FUZZ_SPEC)


@pytest.fixture(scope="module")
def gguf_path(fuzz_model, tmp_path_factory) -> Path:
    """The fuzz model as GGUF: Q8_0 matrices (block-quantized rows), F32 norms, a small vocabulary."""
    import gguf

    from tests.helpers.gguf_files import write_llama_gguf

    path = tmp_path_factory.mktemp("fuzz_gguf") / "model.gguf"
    write_llama_gguf(fuzz_model.model, path, gguf.GGMLQuantizationType.Q8_0, tokens=[f"t{i}" for i in range(64)])
    return path


def _load(path) -> int:
    from cserve import _core

    return _core.testing.load_model(str(path))


def _engine(path):
    from cserve import _core

    c = _core.EngineConfig()
    c.model = str(path)
    c.dtype = "float32"
    c.max_model_len = 64
    c.num_threads = 1
    return _core.Engine(c)


# ---- GGUF layout, for structure-aware mutations ----

_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_fields(data: bytes) -> tuple[list[tuple[int, int, str, str]], int]:
    """Every field of a (valid) GGUF header as (offset, width, kind, owner), and the header's end.
    kind: magic, version, count, length, type, value, ndims, dim, ggml_type, offset."""
    fields: list[tuple[int, int, str, str]] = []
    pos = 0

    def take(width: int, kind: str, owner: str = "") -> int:
        nonlocal pos
        fields.append((pos, width, kind, owner))
        v = int.from_bytes(data[pos:pos + width], "little")
        pos += width
        return v

    def string(owner: str = "") -> str:
        nonlocal pos
        n = take(8, "length", owner)
        s = data[pos:pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def value(t: int, owner: str) -> None:
        nonlocal pos
        if t == 8:
            string(owner)
        elif t == 9:
            et = take(4, "type", owner)
            n = take(8, "count", owner)
            for _ in range(n):
                value(et, owner)
        else:
            take(_GGUF_SIZES[t], "value", owner)

    take(4, "magic")
    take(4, "version")
    n_tensors = take(8, "count")
    n_kv = take(8, "count")
    for _ in range(n_kv):
        key = string()
        value(take(4, "type", key), key)
    for _ in range(n_tensors):
        name = string()
        for _ in range(take(4, "ndims", name)):
            take(8, "dim", name)
        take(4, "ggml_type", name)
        take(8, "offset", name)
    return fields, pos


def gguf_tensor_field(data: bytes, tensor: str, kind: str) -> tuple[int, int]:
    """(offset, width) of one field of one tensor's info (the last one of that kind)."""
    found = [(o, w) for o, w, k, owner in gguf_fields(data)[0] if k == kind and owner == tensor]
    assert found, (tensor, kind)
    return found[-1]


def gguf_key_field(data: bytes, key: str, kind: str) -> tuple[int, int]:
    found = [(o, w) for o, w, k, owner in gguf_fields(data)[0] if k == kind and owner == key]
    assert found, (key, kind)
    return found[0]


def _put(data: bytearray, offset: int, width: int, value: int) -> None:
    data[offset:offset + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


# ---- mutations ----


def _interesting(rng: random.Random, width: int, old: int, file_size: int) -> int:
    if width == 1:
        return rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
    if width == 2:
        return rng.choice([0, 1, 0x7FFF, 0x8000, 0xFFFF, rng.randrange(1 << 16)])
    if width == 4:
        return rng.choice([0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 15, 16, 29, 30, 31, 255, 1 << 16, (1 << 31) - 1,
                           1 << 31, (1 << 32) - 1, old + 1, old - 1, old ^ (1 << rng.randrange(32)),
                           rng.randrange(1 << 32)])
    return rng.choice([0, 1, 2, 31, 32, 33, 1 << 31, 1 << 32, (1 << 40) - 1, 1 << 40, (1 << 40) + 1, 1 << 62,
                       (1 << 63) - 1, 1 << 63, U64, U64 - 31, U64 - 255, file_size, file_size - 1, file_size + 1,
                       file_size // 2, old + 1, old - 1, old + 32, old * 2, old << 20, old ^ (1 << rng.randrange(64)),
                       rng.randrange(1 << 64)])


def _raw_mutation(rng: random.Random, data: bytearray, header_end: int, notes: list[str]) -> bytearray:
    """Structure-blind edits, mostly inside the header."""
    span = min(header_end if rng.random() < 0.9 else len(data), len(data))
    op = rng.choice(["byte", "bitflip", "int64", "int32", "truncate", "insert", "delete"])
    if span < 8:  # too little left to edit in place
        op = "insert"
    i = rng.randrange(max(span, 1))
    notes.append(f"{op}@{i}")
    if op == "byte":
        data[i] = rng.randrange(256)
    elif op == "bitflip":
        data[i] ^= 1 << rng.randrange(8)
    elif op in ("int64", "int32"):
        width = 8 if op == "int64" else 4
        i = min(i, len(data) - width)
        _put(data, i, width, _interesting(rng, width, int.from_bytes(data[i:i + width], "little"), len(data)))
    elif op == "truncate":
        del data[i:]
    elif op == "insert":
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 8, 13])))
    else:
        del data[i:i + rng.choice([1, 4, 8, 13])]
    return data


def mutate_gguf(rng: random.Random, original: bytes, fields, header_end: int, notes: list[str]) -> bytes:
    by_kind: dict[str, list] = {}
    for f in fields:
        by_kind.setdefault(f[2], []).append(f)
    kinds = sorted(by_kind)
    data = bytearray(original)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if rng.random() < 0.6 and len(data) == len(original):  # field offsets hold while the length does
            # A kind first, so that the few counts and offsets are hit as often as the many string lengths.
            offset, width, kind, owner = rng.choice(by_kind[rng.choice(kinds)])
            old = int.from_bytes(data[offset:offset + width], "little")
            new = _interesting(rng, width, old, len(data))
            notes.append(f"{kind}({owner})@{offset}={new}")
            _put(data, offset, width, new)
        else:
            data = _raw_mutation(rng, data, header_end, notes)
    return bytes(data)


def _odd_json_value(rng: random.Random):
    return rng.choice([0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 + 1, 2 ** 62, 2 ** 63 - 1, 2 ** 63, 2 ** 64,
                       10 ** 30, 1e308, -1e308, 0.5, 1.5, -0.0, "x", "", None, True, [], {}, [1, 2]])


def st_split(data: bytes) -> tuple[dict, bytes]:
    """A (valid) safetensors file's JSON header and its data section."""
    (hlen,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + hlen]), data[8 + hlen:]


def st_join(header_text: str, body: bytes) -> bytes:
    raw = header_text.encode()
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_safetensors(rng: random.Random, original: bytes, notes: list[str]) -> bytes:
    header, body = st_split(original)
    hlen = len(original) - 8 - len(body)
    op = rng.choice(["entry", "entry", "entry", "entry", "entry", "length", "raw", "raw", "duplicate", "junk"])
    notes.append(op)
    if op == "length":
        data = bytearray(original)
        new = _interesting(rng, 8, hlen, len(data))
        notes.append(f"header_len={new}")
        _put(data, 0, 8, new)
        return bytes(data)
    if op == "raw":
        return bytes(_raw_mutation(rng, bytearray(original), 8 + hlen, notes))
    names = [n for n in header if n != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    notes.append(name)
    if op == "entry":
        what = rng.choice(["dtype", "shape", "shape", "offsets", "offsets", "offsets", "drop", "entry"])
        notes.append(what)
        if what == "dtype":
            entry["dtype"] = rng.choice(["F64", "I8", "U8", "BOOL", "F8_E4M3", "f32", "F32 ", "", 5, None, ["F32"]])
        elif what == "shape":
            shape = list(entry["shape"])
            r = rng.random()
            if r < 0.5 and shape:
                shape[rng.randrange(len(shape))] = _odd_json_value(rng)
            elif r < 0.7:
                shape.append(_odd_json_value(rng))
            elif r < 0.8:
                shape = shape[:-1]
            elif r < 0.9:  # byte sizes that wrap to 0 in 64 bits, with offsets to match the wrapped size
                shape = [2 ** 31, 2 ** 31] if rng.random() < 0.5 else [2 ** 62, 4, 4]
                if rng.random() < 0.5:
                    entry["data_offsets"] = [entry["data_offsets"][0]] * 2
            else:
                shape = _odd_json_value(rng)
            entry["shape"] = shape
        elif what == "offsets":
            b, e = entry["data_offsets"]
            r = rng.random()
            if r < 0.2:
                entry["data_offsets"] = [e, b]
            elif r < 0.6:
                k = rng.randrange(2)
                v = [b, e]
                v[k] = rng.choice([_odd_json_value(rng), len(body), len(body) + 1, v[k] + 1, v[k] - 4, v[k] + 4])
                entry["data_offsets"] = v
            elif r < 0.8:
                shift = rng.choice([4, -4, len(body), 2 ** 63, -(2 ** 63)])
                entry["data_offsets"] = [b + shift, e + shift]
            else:
                entry["data_offsets"] = rng.choice([[b], [b, e, e], [], None, "0-4"])
        elif what == "drop":
            del entry[rng.choice(list(entry))]
        else:
            header[name] = _odd_json_value(rng)
    elif op == "junk":
        header[f"junk.{rng.randrange(100)}"] = {"dtype": "F32", "shape": [_odd_json_value(rng)],
                                                "data_offsets": [0, _odd_json_value(rng)]}
    if op == "duplicate":  # the same tensor named twice in the JSON text
        text = json.dumps(header)
        dup = json.dumps({name: {**entry, "data_offsets": [0, 4], "shape": [1]}})[1:-1]
        text = text[:-1] + ", " + dup + "}"
    else:
        try:
            text = json.dumps(header)
        except ValueError:
            text = "{}"
    return st_join(text, body)


CONFIG_FIELDS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                 "partial_rotary_factor", "rope_scaling", "tie_word_embeddings", "sliding_window", "eos_token_id",
                 "bos_token_id", "torch_dtype", "architectures", "model_type", "layer_types", "attention_bias"]


def mutate_config(rng: random.Random, original: str, notes: list[str]) -> str:
    cfg = json.loads(original)
    for _ in range(rng.choice([1, 1, 2])):
        field = rng.choice(CONFIG_FIELDS)
        if field == "rope_scaling":
            value = rng.choice([{"rope_type": "yarn", "factor": _odd_json_value(rng), "original_max_position_embeddings":
                                 _odd_json_value(rng)},
                                {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": _odd_json_value(rng),
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                {"rope_type": "linear", "factor": _odd_json_value(rng)},
                                {"rope_type": "dynamic", "factor": _odd_json_value(rng)}, _odd_json_value(rng)])
        else:
            value = _odd_json_value(rng)
        notes.append(f"{field}={value!r}"[:80])
        if value is None and rng.random() < 0.5:
            cfg.pop(field, None)
        else:
            cfg[field] = value
    text = json.dumps(cfg)
    if rng.random() < 0.05:
        text = text[:rng.randrange(len(text))]
        notes.append("truncated")
    return text


# ---- the fuzz loop (in a subprocess) ----

# What a bad file may raise: ValueError (InvalidArgument), NotImplementedError (NotSupported),
# FileNotFoundError (NotFound). MemoryError would mean a huge allocation was attempted.
ALLOWED = (ValueError, NotImplementedError, FileNotFoundError)


def _fuzz(kind: str, source: Path, work: Path, seed: int, count: int, budget_s: float) -> dict:
    from cserve import _core

    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    progress = work / "current.txt"
    if kind == "gguf":
        original = source.read_bytes()
        fields, header_end = gguf_fields(original)
        target = work / "model.gguf"
    else:
        original_st = (source / ST).read_bytes()
        original_cfg = (source / "config.json").read_text()
        target = work / "model"
        target.mkdir(exist_ok=True)
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    ran = 0
    t0 = time.monotonic()
    for i in range(-1, count):  # -1: the file as it is, which must load
        if i >= 0 and time.monotonic() - t0 > budget_s:
            break
        notes: list[str] = []
        if kind == "gguf":
            target.write_bytes(original if i < 0 else mutate_gguf(rng, original, fields, header_end, notes))
        else:
            st, cfg = original_st, original_cfg
            if i >= 0 and kind == "config":
                cfg = mutate_config(rng, original_cfg, notes)
            elif i >= 0:
                st = mutate_safetensors(rng, original_st, notes)
            (target / ST).write_bytes(st)
            (target / "config.json").write_text(cfg)
        progress.write_text(f"{kind} seed {seed} mutation {i}: {' '.join(notes)}\n")
        try:
            _core.testing.load_model(str(target))
            outcome = "loaded"
        except ALLOWED as e:
            outcome = type(e).__name__
            if str(target) not in str(e):
                failures.append(f"mutation {i} ({' '.join(notes)}): error does not name the file: {e}")
        except BaseException as e:  # noqa: BLE001 - every other outcome is the failure under test
            outcome = type(e).__name__
            failures.append(f"mutation {i} ({' '.join(notes)}): {type(e).__name__}: {e}"[:500])
        if i < 0:
            if outcome != "loaded":
                failures.append(f"the unmutated {kind} model does not load: {outcome}")
                break
            continue
        ran += 1
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return dict(kind=kind, ran=ran, seconds=time.monotonic() - t0, outcomes=outcomes, failures=failures[:20])


def _run_fuzz(kind: str, source: Path, work: Path, seed: int, count: int) -> dict:
    cmd = [sys.executable, "-m", "tests.loader.test_fuzz_headers", kind, str(source), str(work), str(seed), str(count),
           str(BUDGET_S)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUDGET_S + 120)
    last = (work / "current.txt").read_text() if (work / "current.txt").exists() else "(before the first mutation)"
    assert p.returncode == 0, (f"the fuzz subprocess died (exit code {p.returncode}) at {last}\n"
                               f"stderr:\n{p.stderr[-4000:]}")
    report = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{kind}: {report['ran']} mutations in {report['seconds']:.1f} s: {report['outcomes']}")
    assert not report["failures"], "\n".join(report["failures"])
    # A slow machine may stop at the time budget; it must still have run a fair share.
    assert report["ran"] >= min(count, 300), report
    return report


def test_fuzz_gguf_headers(gguf_path, tmp_path):
    report = _run_fuzz("gguf", gguf_path, tmp_path / "work", seed=1234, count=NUM_GGUF)
    assert report["outcomes"].get("ValueError", 0) > report["ran"] // 4  # the mutations do reach the checks


def test_fuzz_safetensors_headers(fuzz_model, tmp_path):
    report = _run_fuzz("safetensors", Path(fuzz_model.path), tmp_path / "work", seed=5678, count=NUM_SAFETENSORS)
    assert report["outcomes"].get("ValueError", 0) > report["ran"] // 4


def test_fuzz_config_json(fuzz_model, tmp_path):
    report = _run_fuzz("config", Path(fuzz_model.path), tmp_path / "work", seed=91011, count=NUM_CONFIG)
    assert report["outcomes"].get("ValueError", 0) > report["ran"] // 4


# ---- targeted cases ----


def _gguf_with(gguf_path: Path, tmp_path: Path, edit) -> Path:
    data = bytearray(gguf_path.read_bytes())
    edit(data)
    out = tmp_path / "bad.gguf"
    out.write_bytes(bytes(data))
    return out


def _check(path: Path, tensor: str | None, *patterns: str, exc=ValueError, file: Path | None = None) -> None:
    """Loading path (by the engine and by the test binding) fails with one error naming the
    file (`file`, or path itself), the tensor and patterns."""
    import re

    for load in (_engine, _load):
        with pytest.raises(exc) as info:
            load(path)
        msg = str(info.value)
        assert str(file or path) in msg, msg
        if tensor:
            assert tensor in msg, msg
        for p in patterns:
            assert re.search(p, msg), (p, msg)


def test_gguf_fixture_loads(gguf_path):
    assert _load(gguf_path) > 0
    _engine(gguf_path)


def test_gguf_tensor_data_past_the_end(gguf_path, tmp_path):
    name = "blk.0.ffn_down.weight"
    # Far past the end; 2^64 - 32, which once wrapped the data start back into the header.
    for offset in (1 << 20, U64 - 31):
        def edit(data, offset=offset):
            off, width = gguf_tensor_field(data, name, "offset")
            _put(data, off, width, offset)
        _check(_gguf_with(gguf_path, tmp_path, edit), name, "outside the file")


def test_gguf_truncated_data(gguf_path, tmp_path):
    data = gguf_path.read_bytes()
    offsets = {owner: int.from_bytes(data[o:o + w], "little")
               for o, w, k, owner in gguf_fields(data)[0] if k == "offset"}
    last = max(offsets, key=offsets.get)  # the tensor whose data ends the file
    path = tmp_path / "short.gguf"
    path.write_bytes(data[:-40])
    _check(path, last, "outside the file")


def test_gguf_shape_product_overflows(gguf_path, tmp_path):
    name = "output_norm.weight"

    def edit(data):
        off, _ = gguf_tensor_field(data, name, "dim")  # a 1-D tensor: make its one dimension 2^40 ...
        _put(data, off, 8, 1 << 40)
    _check(_gguf_with(gguf_path, tmp_path, edit), name, "outside the file")
    # ... and 4 dimensions of 2^40 (the product overflows 64 bits): built by hand.
    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    header += struct.pack("<Q", 1) + b"w" + struct.pack("<I", 4) + struct.pack("<QQQQ", *([1 << 40] * 4))
    header += struct.pack("<IQ", 0, 0)
    path = tmp_path / "overflow.gguf"
    path.write_bytes(header + b"\0" * 64)
    _check(path, "tensor w", "shape too large")


def test_gguf_block_rows(gguf_path, tmp_path):
    """A Q8_0 row of 33 values is not whole blocks."""
    name = "blk.0.attn_q.weight"

    def edit(data):
        off, _ = [(o, w) for o, w, k, owner in gguf_fields(bytes(data))[0] if k == "dim" and owner == name][0]
        _put(data, off, 8, 33)
    _check(_gguf_with(gguf_path, tmp_path, edit), name, "block size")


def test_gguf_bad_type_and_dims(gguf_path, tmp_path):
    name = "blk.0.attn_k.weight"

    def bad_type(data):
        off, width = gguf_tensor_field(data, name, "ggml_type")
        _put(data, off, width, 1000)
    _check(_gguf_with(gguf_path, tmp_path, bad_type), name, "ggml type", exc=NotImplementedError)

    def bad_dims(data):
        off, width = gguf_tensor_field(data, name, "ndims")
        _put(data, off, width, 7)
    _check(_gguf_with(gguf_path, tmp_path, bad_dims), name, "7 dimensions")


def test_gguf_duplicate_tensor(gguf_path, tmp_path):
    """Two tensor infos with the same name (same-length names, so the layout holds)."""
    def edit(data):
        start = bytes(data).index(b"blk.0.attn_k.weight")  # tensor names appear once, in the tensor infos
        data[start:start + len("blk.0.attn_k.weight")] = b"blk.0.attn_q.weight"
    _check(_gguf_with(gguf_path, tmp_path, edit), "blk.0.attn_q.weight", "appears twice")


def test_gguf_array_count_2_pow_40(gguf_path, tmp_path):
    key = "tokenizer.ggml.tokens"

    def edit(data):
        off, width = gguf_key_field(data, key, "count")
        _put(data, off, width, 1 << 40)
    _check(_gguf_with(gguf_path, tmp_path, edit), key, "1099511627776 elements", "longer than the file")

    def edit_string(data):  # a string longer than the file
        off, width = [(o, w) for o, w, k, owner in gguf_fields(bytes(data))[0] if k == "length" and owner == key][1]
        _put(data, off, width, 1 << 40)
    _check(_gguf_with(gguf_path, tmp_path, edit_string), None, "truncated")


def test_gguf_huge_tensor_count(gguf_path, tmp_path):
    def edit(data):
        _put(data, 8, 8, 1 << 40)
    _check(_gguf_with(gguf_path, tmp_path, edit), None, "1099511627776 tensors")


@pytest.mark.parametrize("key,value,match", [
    ("llama.block_count", (1 << 32) - 1, "block_count"),  # these keys are u32 in the file
    ("llama.embedding_length", 0, "embedding_length"),
    ("llama.attention.head_count", (1 << 32) - 1, "head_count"),
    ("llama.attention.head_count_kv", 3, "head_count_kv"),
    ("llama.context_length", 1 << 31, "context_length"),
])
def test_gguf_absurd_hyperparameters(gguf_path, tmp_path, key, value, match):
    def edit(data):
        off, width = gguf_key_field(data, key, "value")
        _put(data, off, width, value)
    _check(_gguf_with(gguf_path, tmp_path, edit), None, match)


def test_gguf_odd_head_dim(tmp_path):
    """attention.key_length 1 with matching tensors: once a SIGFPE (the q/k row un-permutation
    divided by head_dim / 2), now an error naming the field."""
    import gguf

    path = tmp_path / "hd1.gguf"
    H, I, V, heads, kv = 32, 64, 64, 4, 2
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_feed_forward_length(I)
    w.add_block_count(1)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_key_length(1)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (V, H), "output_norm.weight": (H,), "output.weight": (V, H),
              "blk.0.attn_norm.weight": (H,), "blk.0.ffn_norm.weight": (H,), "blk.0.attn_q.weight": (heads, H),
              "blk.0.attn_k.weight": (kv, H), "blk.0.attn_v.weight": (kv, H), "blk.0.attn_output.weight": (H, heads),
              "blk.0.ffn_gate.weight": (I, H), "blk.0.ffn_up.weight": (I, H), "blk.0.ffn_down.weight": (H, I)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _check(path, None, "head_dim.*even")


def _st_dir(fuzz_model, tmp_path: Path, header: dict | None = None, raw: bytes | None = None) -> Path:
    import shutil

    d = tmp_path / "model"
    shutil.copytree(fuzz_model.path, d)
    if raw is None:
        old, body = st_split((d / ST).read_bytes())
        old.update(header or {})
        raw = st_join(json.dumps(old), body)
    (d / ST).write_bytes(raw)
    return d


def test_safetensors_header_length_larger_than_file(fuzz_model, tmp_path):
    data = (Path(fuzz_model.path) / ST).read_bytes()
    for n in (len(data), 1 << 40, U64):
        d = _st_dir(fuzz_model, tmp_path / str(n), raw=struct.pack("<Q", n) + data[8:])
        _check(d, None, "truncated safetensors header", file=d / ST)


def test_safetensors_data_past_the_end(fuzz_model, tmp_path):
    name = "model.layers.0.mlp.down_proj.weight"
    header, body = st_split((Path(fuzz_model.path) / ST).read_bytes())
    entry, size = header[name], len(body)
    b, e = entry["data_offsets"]
    for i, offsets in enumerate([[size - 4, size - 4 + (e - b)], [b + 2 ** 62, e + 2 ** 62], [e, b]]):
        d = _st_dir(fuzz_model, tmp_path / str(i), {name: {**entry, "data_offsets": offsets}})
        _check(d, name, "data_offsets", file=d / ST)


@pytest.mark.parametrize("shape", [[2 ** 31, 2 ** 31], [2 ** 62, 4], [2 ** 40, 2 ** 40, 2 ** 40]])
def test_safetensors_shape_product_overflows(fuzz_model, tmp_path, shape):
    """[2^31, 2^31] F32 is 2^64 bytes: it once wrapped to 0 and matched data_offsets [0, 0]."""
    name = "model.norm.weight"
    d = _st_dir(fuzz_model, tmp_path, {name: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    _check(d, name, "shape too large", file=d / ST)


def test_safetensors_bad_entries(fuzz_model, tmp_path):
    name = "model.layers.0.self_attn.q_proj.weight"
    entry = st_split((Path(fuzz_model.path) / ST).read_bytes())[0][name]
    cases = [({**entry, "shape": [-1, 32]}, "non-negative", ValueError),
             ({**entry, "shape": [1.5, 32]}, "non-negative", ValueError),
             ({**entry, "data_offsets": [0, 1e300]}, "data_offsets", ValueError),
             ({**entry, "dtype": "Q9"}, "Q9", NotImplementedError),
             ({"dtype": "F32", "shape": [32, 32]}, "data_offsets", ValueError)]
    for i, (bad, match, exc) in enumerate(cases):
        d = _st_dir(fuzz_model, tmp_path / str(i), {name: bad})
        _check(d, name, match, exc=exc, file=d / ST)


@pytest.mark.parametrize("changes,match", [
    (dict(num_hidden_layers=2 ** 40), "num_hidden_layers"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(hidden_size=2 ** 40), "hidden_size"),
    (dict(vocab_size=2 ** 40), "vocab_size"),
    (dict(intermediate_size=-5), "intermediate_size"),
    (dict(num_attention_heads=2 ** 62), "num_attention_heads"),
    (dict(head_dim=3), "head_dim"),
    (dict(head_dim=2 ** 20, num_attention_heads=4), "num_attention_heads"),
    (dict(max_position_embeddings=2 ** 62), "max_position_embeddings"),
    (dict(partial_rotary_factor=0.01), "partial_rotary_factor"),
    (dict(num_key_value_heads=2 ** 40), "num_key_value_heads"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 1e300}), "factor"),
    (dict(rms_norm_eps=0), "rms_norm_eps"),
])
def test_absurd_config_fields(fuzz_model, tmp_path, changes, match):
    from tests.helpers.models import with_config

    d = with_config(fuzz_model, tmp_path / "m", **changes)
    _check(Path(d), None, match, file=Path(d) / "config.json")


# ---- the subprocess ----


def _main(argv: list[str]) -> None:
    import resource

    kind, source, work, seed, count, budget = argv
    # A huge allocation becomes a MemoryError (reported) instead of taking the machine's memory;
    # not under AddressSanitizer, whose shadow memory needs terabytes of address space.
    if "asan" not in Path("/proc/self/maps").read_text() + os.environ.get("LD_PRELOAD", ""):
        limit = 8 << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = _fuzz(kind, Path(source), Path(work), int(seed), int(count), float(budget))
    print(json.dumps(report))


if __name__ == "__main__":
    _main(sys.argv[1:])
