"""Prefix-cache block hashes: each algorithm against an independent Python encoding."""

from __future__ import annotations

import hashlib
import struct

import pytest

from cserve._core.testing import block_hash

ALGOS = ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"]

# ---- independent references ----

_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                           0x27D4EB2F165667C5)
_M = (1 << 64) - 1


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    return (_rotl((acc + lane * _P2) & _M, 31) * _P1) & _M


def _merge(acc: int, val: int) -> int:
    return ((acc ^ _round(0, val)) * _P1 + _P4) & _M


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 from its specification."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed, (seed - _P1) & _M]
        while i + 32 <= n:
            for j in range(4):
                v[j] = _round(v[j], struct.unpack_from("<Q", data, i + 8 * j)[0])
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M
        for x in v:
            h = _merge(h, x)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h = (_rotl(h ^ _round(0, struct.unpack_from("<Q", data, i)[0]), 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h = (_rotl(h ^ (struct.unpack_from("<I", data, i)[0] * _P1 & _M), 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h = (_rotl(h ^ (data[i] * _P5 & _M), 11) * _P1) & _M
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    h ^= h >> 32
    return h


def test_xxh64_reference_vectors():
    # Published XXH64 test values (seed 0).
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"a") == 0xD24EC4F1A98C6E5B
    assert xxh64(b"abc") == 0x44BC2CF5AD770999


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for code, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if value < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | code]) + struct.pack(fmt, value)
    raise ValueError(value)


def cbor_key(parent: bytes, tokens: list[int], extra: str) -> bytes:
    out = _cbor_head(4, 3) + _cbor_head(2, len(parent)) + parent + _cbor_head(4, len(tokens))
    for t in tokens:
        out += _cbor_head(0, t) if t >= 0 else _cbor_head(1, -1 - t)
    if extra:
        e = extra.encode()
        out += _cbor_head(3, len(e)) + e
    else:
        out += b"\xf6"
    return out


def raw_key(parent: bytes, tokens: list[int], extra: str) -> bytes:
    return bytes([len(parent)]) + parent + struct.pack(f"<{len(tokens)}i", *tokens) + extra.encode()


def reference(algo: str, parent: bytes, tokens: list[int], extra: str) -> bytes:
    key = cbor_key(parent, tokens, extra) if algo.endswith("_cbor") else raw_key(parent, tokens, extra)
    if algo.startswith("xxhash"):
        return struct.pack("<Q", xxh64(key))
    return hashlib.sha256(key).digest()


TOKEN_CASES = [[], [7], list(range(16)), [0, 23, 24, 255, 256, 65535, 65536, 2**31 - 1], list(range(100, 113)),
               # sizes around the SHA-256 padding boundary (55/56/64 bytes of input)
               list(range(13)), list(range(14)), list(range(15)), list(range(31)), list(range(32))]


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("tokens", TOKEN_CASES, ids=lambda t: f"n{len(t)}")
def test_hash_matches_reference(algo, tokens):
    for parent in (b"", bytes(range(8)), bytes(range(32))):
        for extra in ("", "salt", "lora-7"):
            assert block_hash(algo, parent, tokens, extra) == reference(algo, parent, tokens, extra)


def test_digest_sizes():
    assert len(block_hash("sha256", b"", [1, 2], "")) == 32
    assert len(block_hash("sha256_cbor", b"", [1, 2], "")) == 32
    assert len(block_hash("xxhash", b"", [1, 2], "")) == 8
    assert len(block_hash("xxhash_cbor", b"", [1, 2], "")) == 8


def test_hashes_differ_per_algo_and_chain_on_parent():
    tokens = list(range(16))
    by_algo = {a: block_hash(a, b"", tokens, "") for a in ALGOS}
    assert len(set(by_algo.values())) == 4
    for algo in ALGOS:
        h0 = block_hash(algo, b"", tokens, "")
        assert block_hash(algo, b"", tokens, "") == h0  # deterministic
        h1 = block_hash(algo, h0, tokens, "")
        assert h1 != h0
        assert block_hash(algo, block_hash(algo, b"", [9] * 16, ""), tokens, "") != h1  # parent matters
        assert block_hash(algo, h0, tokens, "salt") != h1  # extra key matters
        assert block_hash(algo, h0, tokens[:-1] + [17], "") != h1  # tokens matter


def test_unknown_algo():
    with pytest.raises(ValueError, match="prefix_caching_hash_algo"):
        block_hash("md5", b"", [1], "")
