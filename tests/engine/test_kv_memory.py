"""The CPU KV cache's memory: its default size and the settings that change it, the pool
committed (resident) at start, a clear error at start when it cannot fit, and free blocks
handed out so that a steady load keeps using the same memory."""

from __future__ import annotations

import gc

import pytest

from cserve import _core
from cserve._core.testing import BlockPool

GiB = 1 << 30
MiB = 1 << 20
ENV = "VLLM_CPU_KVCACHE_SPACE"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def _needs_available(nbytes: int) -> None:
    if _meminfo("MemAvailable") < nbytes + 2 * GiB:
        pytest.skip(f"needs {nbytes / GiB:.1f} GiB of free memory to plan")


def _config(**fields) -> _core.EngineConfig:
    config = _core.EngineConfig()
    for k, v in fields.items():
        setattr(config, k, v)
    return config


def _plan(config=None, layers=2, kv_heads=2, head_dim=8, dtype="float32", max_model_len=512):
    return _core.testing.kv_cache_plan(config or _config(), layers, kv_heads, head_dim, dtype, max_model_len)


# --- the plan: which setting decides, and what it gives -------------------------------------------

def test_default_is_4_gib():
    # An 8B-like shape: 128 KiB of bfloat16 per token, 2 MiB per block of 16.
    _needs_available(4 * GiB)
    blocks, per_block, source = _plan(layers=32, kv_heads=8, head_dim=128, dtype="bfloat16", max_model_len=8192)
    assert per_block == 2 * MiB
    assert blocks * per_block == 4 * GiB and "default" in source


def test_default_is_capped_at_max_num_seqs_full_sequences():
    blocks, per_block, source = _plan(_config(max_num_seqs=8), max_model_len=512)
    assert blocks == 8 * 512 // 16 and "capped" in source


def test_default_grows_to_one_full_sequence():
    # 40960 tokens of 128 KiB: 5 GiB, more than the 4 GiB default.
    _needs_available(5 * GiB)
    blocks, per_block, source = _plan(_config(max_num_seqs=4), layers=32, kv_heads=8, head_dim=128,
                                      dtype="bfloat16", max_model_len=40960)
    assert blocks == 40960 // 16 and "one max_model_len sequence" in source


def test_env_sets_the_size_in_gib(monkeypatch):
    monkeypatch.setenv(ENV, "0.25")
    blocks, per_block, source = _plan()
    assert blocks * per_block == 256 * MiB and source == ENV
    # Not capped at max_num_seqs sequences: the prefix cache can use the rest.
    monkeypatch.setenv(ENV, "1")
    blocks, per_block, _ = _plan(_config(max_num_seqs=1))
    assert blocks * per_block == GiB


def test_env_zero_means_the_default(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert "default" in _plan()[2]


def test_env_must_be_a_number(monkeypatch):
    monkeypatch.setenv(ENV, "4GB")
    with pytest.raises(ValueError, match=ENV):
        _plan()


def test_precedence(monkeypatch):
    monkeypatch.setenv(ENV, "0.25")
    blocks, per_block, source = _plan(_config(kv_cache_memory_bytes=64 * MiB))
    assert blocks * per_block == 64 * MiB and source == "kv_cache_memory_bytes"
    assert _plan(_config(num_gpu_blocks_override=100))[0::2] == (100, "num_gpu_blocks_override")
    # The variable wins over gpu_memory_utilization on the CPU ...
    assert _plan(_config(gpu_memory_utilization=0.5))[2] == ENV
    # ... which applies when given and the variable is not.
    monkeypatch.delenv(ENV)
    blocks, _, source = _plan(_config(gpu_memory_utilization=0.5, max_num_seqs=4))
    assert source == "gpu_memory_utilization" and blocks == 4 * 512 // 16


def test_more_than_available_fails_at_start(monkeypatch):
    monkeypatch.setenv(ENV, "100000")
    with pytest.raises(MemoryError, match=r"does not fit in the memory available .*VLLM_CPU_KVCACHE_SPACE"):
        _plan()
    monkeypatch.delenv(ENV)
    with pytest.raises(MemoryError, match="--kv-cache-memory-bytes"):
        _plan(_config(kv_cache_memory_bytes=1 << 50))


def test_too_small_for_one_sequence_names_the_settings(monkeypatch):
    monkeypatch.setenv(ENV, "0.001")  # ~1 MiB; one 512-token sequence needs 2 MiB of float32 here
    with pytest.raises(MemoryError, match=r"max seq len \(512\).*VLLM_CPU_KVCACHE_SPACE"):
        _plan(kv_heads=8, head_dim=64)


# --- a real engine --------------------------------------------------------------------------------

def _engine(model_dir: str, **fields) -> _core.Engine:
    return _core.Engine(_config(model=model_dir, dtype="float32", num_threads=1, **fields))


def test_engine_default_and_env(tiny_model_dir, monkeypatch):
    # The tiny Llama: 2 layers, 2 KV heads of 8, float32: 4 KiB per 16-token block, 512 tokens.
    info = _engine(tiny_model_dir, max_num_seqs=4).model_info()
    assert info.num_kv_blocks == 4 * 512 // 16 and info.kv_cache_bytes == info.num_kv_blocks * 4096
    monkeypatch.setenv(ENV, "0.0625")
    info = _engine(tiny_model_dir, max_num_seqs=4).model_info()
    assert info.kv_cache_bytes == 64 * MiB
    info = _engine(tiny_model_dir, kv_cache_memory_bytes=8 * MiB).model_info()
    assert info.kv_cache_bytes == 8 * MiB


def test_engine_refuses_a_cache_larger_than_memory(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ENV, "100000")
    with pytest.raises(MemoryError, match=r"CPU KV cache \(100000\.00 GiB, sized by VLLM_CPU_KVCACHE_SPACE\)"):
        _engine(tiny_model_dir)


def test_pool_is_resident_after_start(tiny_model_dir):
    gc.collect()
    before = _rss()
    engine = _engine(tiny_model_dir, kv_cache_memory_bytes=256 * MiB)
    grown = _rss() - before
    assert engine.model_info().kv_cache_bytes == 256 * MiB
    assert grown >= 0.95 * 256 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    del engine
    gc.collect()


# --- block reuse ----------------------------------------------------------------------------------

def test_steady_load_reuses_the_same_blocks():
    pool = BlockPool(1000)
    seen = set()
    for _ in range(50):
        a, b = pool.allocate(3), pool.allocate(5)
        pool.release(list(reversed(a)))
        c = pool.allocate(2)
        pool.release(list(reversed(b)))
        pool.release(list(reversed(c)))
        seen.update(a + b + c)
    assert seen == set(range(8))  # the peak in use, not the pool


def test_fresh_blocks_before_evicting_cached_ones():
    pool = BlockPool(4)
    a, b = pool.allocate(2)
    pool.set_cached(a, b"\x01" * 32)
    pool.release([b, a])
    # b held nothing: reused first. Then the never-used blocks; the cached one last.
    assert pool.allocate(3) == [b, 2, 3]
    assert pool.lookup(b"\x01" * 32) == a
    assert pool.allocate(1) == [a] and pool.lookup(b"\x01" * 32) == -1


def test_a_block_without_a_hash_is_reused_before_any_cached_one():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    pool.set_cached(a, b"\x01" * 32)
    pool.set_cached(b, b"\x02" * 32)
    pool.release([a, b])
    pool.release([c])  # freed last, but it holds nothing: the cached a and b stay findable
    assert pool.allocate(1) == [c]
    assert pool.allocate(1) == [a] and pool.lookup(b"\x02" * 32) == b  # then least recently freed
    pool.release([a, c])
    assert pool.reset_prefix_cache() is True
    assert sorted(pool.allocate(3)) == [a, b, c] and pool.lookup(b"\x02" * 32) == -1
