"""Choosing the backend (`device`): auto, cpu, cuda, cuda:N. On machines without a GPU (CI's),
auto must fall back to the CPU and an explicit cuda must fail with one clear reason; the
GPU side is tested in tests/cuda/test_backend.py."""

from __future__ import annotations

import pytest

from cserve import _core
from tests.helpers.models import greedy, make_llm

HAS_GPU = _core.resolve_device("auto")[0] == "cuda"
no_gpu = pytest.mark.skipif(HAS_GPU, reason="a CUDA device is present")


def test_cpu_is_always_cpu():
    assert _core.resolve_device("cpu") == ("cpu", "")


@no_gpu
def test_auto_falls_back_to_the_cpu_and_says_why():
    device, reason = _core.resolve_device("auto")
    assert device == "cpu"
    # Either the backend library is missing (built without nvcc) or it finds no GPU.
    assert "CUDA" in reason or "libcserve_cuda" in reason, reason


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "gpu"])
def test_unknown_devices_are_refused(device):
    with pytest.raises(ValueError, match="not one of auto, cpu, cuda, cuda:N"):
        _core.resolve_device(device)


@no_gpu
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(device, tiny_model_dir):
    with pytest.raises(NotImplementedError, match=f"device {device} is not available"):
        make_llm(tiny_model_dir, device=device)


def test_engine_reports_its_backend(tiny_model_dir):
    llm = make_llm(tiny_model_dir, device="cpu")
    assert llm.model_info.backend.startswith("cpu (")
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], greedy(max_tokens=3, prompt_logprobs=None), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    if not HAS_GPU:  # auto is the CPU here: the same engine
        assert make_llm(tiny_model_dir).model_info.backend == llm.model_info.backend


@pytest.mark.parametrize("kv_cache_dtype", ["fp8", "fp8_e5m2", "bfloat16"])
def test_kv_cache_dtypes_other_than_the_compute_dtype_need_the_gpu(tiny_model_dir, kv_cache_dtype):
    # make_llm computes in float32: any other cache type is the CUDA backend's alone.
    with pytest.raises(NotImplementedError, match=f"kv_cache_dtype {kv_cache_dtype} needs the CUDA backend"):
        make_llm(tiny_model_dir, device="cpu", kv_cache_dtype=kv_cache_dtype)
