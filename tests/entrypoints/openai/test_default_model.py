"""`cserve serve` with no model serves SmolLM2-135M-Instruct (the Q4_1 GGUF) from its cache."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.helpers.server import ServerProcess


@pytest.fixture(scope="module")
def default_server(smollm2_gguf, tmp_path_factory):
    from cserve.model_source import default_model_file

    cache = tmp_path_factory.mktemp("cserve-cache")
    target = default_model_file(cache)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(smollm2_gguf, target)  # the test cache's copy: no download
    except OSError:
        shutil.copyfile(smollm2_gguf, target)
    proc = ServerProcess(None, "--max-model-len", "1024", env={"CSERVE_CACHE": str(cache), "HF_HUB_OFFLINE": "1"},
                         log_dir=cache)
    proc.wait_ready(timeout=120)
    yield proc
    proc.stop()


def test_default_model_answers_a_chat(default_server):
    import openai

    client = openai.OpenAI(base_url=default_server.base_url + "/v1", api_key="x", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
    out = client.chat.completions.create(model="SmolLM2-135M-Instruct", temperature=0, max_tokens=24,
                                         messages=[{"role": "user", "content": "Write a haiku about the sea."}])
    choice = out.choices[0]
    assert choice.message.role == "assistant" and len(choice.message.content) > 10
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 20
    assert "Loading weights" in default_server.log()
