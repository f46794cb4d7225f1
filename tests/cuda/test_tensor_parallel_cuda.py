"""-tp 2 on GPUs (rank r on cuda:r, NCCL and the custom all-reduce) against -tp 1 on one GPU:
identical greedy tokens and logprobs within the GPU's rounding, for a tiny Llama in float32; and
-tp with more ranks than visible GPUs is refused with a clear message (this one runs anywhere)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import LLM, SamplingParams, _core
from cserve.engine import tensor_parallel

ON_GPU = _core.resolve_device("auto")[0] == "cuda"


def _gpus() -> int:
    n = 0
    while ON_GPU:
        try:
            _core.resolve_device(f"cuda:{n}")
        except ValueError:
            break
        n += 1
    return n


PROMPTS = [[5, 17, 99, 23, 4, 250, 7, 7, 31, 64, 12, 140, 3, 77, 201, 9] * 2, [9, 8, 7, 6, 5, 4, 3]]


@pytest.mark.skipif(_gpus() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("disable_custom", [False, True], ids=["custom", "nccl-only"])
def test_tp2_equals_tp1_on_cuda(tiny_model_dir, disable_custom):
    sp = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)

    def run(tp: int, **kw):
        llm = LLM(tiny_model_dir, dtype="float32", device="cuda", tensor_parallel_size=tp, max_model_len=256,
                  gpu_memory_utilization=0.3, **kw)
        try:
            return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
        finally:
            llm.shutdown()

    want = run(1)
    got = run(2, disable_custom_all_reduce=disable_custom)
    for g, w in zip(got, want):
        assert g.outputs[0].token_ids == w.outputs[0].token_ids
        for a, b in zip(g.outputs[0].logprobs, w.outputs[0].logprobs):
            np.testing.assert_allclose(sorted(x.logprob for x in a.values()), sorted(x.logprob for x in b.values()),
                                       atol=2e-3)


class _FakeCore:
    """resolve_device as a host with `gpus` GPUs answers it."""

    def __init__(self, gpus: int) -> None:
        self.gpus = gpus

    def resolve_device(self, device: str):
        if device in ("cuda", "auto"):
            return ("cuda", "")
        if int(device.split(":")[1]) >= self.gpus:
            raise ValueError(f"device {device} does not exist ({self.gpus} CUDA devices visible)")
        return (device, "")


class _Config:
    def __init__(self, device: str) -> None:
        self.device = device


def test_fewer_gpus_than_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(tensor_parallel, "_core", _FakeCore(1))
    with pytest.raises(ValueError, match="2 ranks on this host need 2 GPUs, one per rank, but only 1 are visible"):
        tensor_parallel._check_gpus(_Config("cuda"), 2)


def test_enough_gpus_pass_and_name_nccl_for_the_ranks(monkeypatch, tmp_path):
    lib = tmp_path / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"")
    monkeypatch.setattr(tensor_parallel, "_core", _FakeCore(4))
    monkeypatch.syspath_prepend(str(tmp_path))
    for variable in ("CSERVE_NCCL_LIBRARY", "CSERVE_CUBLASLT"):  # set, then unset: restored after the test
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    tensor_parallel._check_gpus(_Config("cuda"), 4)
    assert os.environ["CSERVE_NCCL_LIBRARY"] == str(lib)


def test_a_fixed_gpu_is_refused_with_several_ranks(monkeypatch):
    monkeypatch.setattr(tensor_parallel, "_core", _FakeCore(2))
    with pytest.raises(ValueError, match="pass --device cuda rather than cuda:1"):
        tensor_parallel._check_gpus(_Config("cuda:1"), 2)
