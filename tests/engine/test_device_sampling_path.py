"""The runner's device-sampling path (the processor and penalty ranges it builds for the
backend's sampler, and how it maps ids, logprobs, ranks and top-N back), run on the CPU
through the backend's emulation of the CUDA sampler (CSERVE_CPU_EMULATE_DEVICE_SAMPLING=1,
greedy rows): the result must be the CPU sampler's."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import SamplingParams
from tests.helpers.models import assert_same_completions, make_llm, random_prompt

CASES = [
    dict(),
    dict(repetition_penalty=1.4),
    dict(frequency_penalty=0.8, presence_penalty=0.5),
    dict(logit_bias={5: 4.0, 17: -3.0, 40: 2.5}),
    dict(allowed_token_ids=[3, 8, 9, 40, 41, 100, 200]),
    dict(min_tokens=8, stop_token_ids=[7, 9]),
]


def _generate(path, graphs: bool):
    llm = make_llm(path, device="cpu", **(dict(cudagraph_capture_sizes=[1, 2, 4, 8]) if graphs else {}))
    rng = np.random.default_rng(11)
    prompts, params = [], []
    for i, kw in enumerate(CASES):
        prompts.append({"prompt_token_ids": random_prompt(rng, 6 + 5 * i, llm.model_info.vocab_size)})
        params.append(SamplingParams(temperature=0, max_tokens=10, logprobs=4, **kw))
    return llm.generate(prompts, params, use_tqdm=False)


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "emulated graphs"])
def test_device_sampling_path_matches_the_cpu_sampler(model_zoo, monkeypatch, graphs):
    path = model_zoo.get("llama").path
    plain = _generate(path, graphs=False)
    monkeypatch.setenv("CSERVE_CPU_EMULATE_DEVICE_SAMPLING", "1")
    if graphs:
        monkeypatch.setenv("CSERVE_CPU_EMULATE_GRAPHS", "1")
    device = _generate(path, graphs=graphs)
    assert_same_completions(plain, device, tol=1e-5, ranks=True)
    assert [d.outputs[0].finish_reason for d in device] == [p.outputs[0].finish_reason for p in plain]
