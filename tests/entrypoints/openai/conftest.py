"""A `cserve serve` process on a tiny chat model, shared by a test module, and clients for it."""

from __future__ import annotations

import pytest

from tests.helpers.server import ServerProcess

MODEL_NAME = "tiny-chat"


@pytest.fixture(scope="module")
def server(request, chat_model_dir, tmp_path_factory):
    # A module may run its tests against -tp 2 as well: pytest.mark.parametrize("server", [1, 2],
    # indirect=True) at module level.
    tp = getattr(request, "param", 1)
    proc = ServerProcess(chat_model_dir, "--served-model-name", MODEL_NAME, "other-name", "--max-model-len", "256",
                         "--enable-prompt-tokens-details", "--enable-tokenizer-info-endpoint",
                         "--enable-server-load-tracking", "--max-logprobs", "5", "--seed", "0", "-tp", str(tp),
                         log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def http(server):
    with server.client(timeout=60) as c:
        yield c
