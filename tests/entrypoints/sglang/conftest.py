"""A `cserve serve` process on a tiny chat model for SGLang's native routes, shared by a module."""

from __future__ import annotations

import pytest

from tests.helpers.server import ServerProcess

MODEL_NAME = "tiny-sglang"


@pytest.fixture(scope="module")
def server(chat_model_dir, tmp_path_factory):
    proc = ServerProcess(chat_model_dir, "--served-model-name", MODEL_NAME, "--max-model-len", "256",
                         "--max-logprobs", "5", "--seed", "0", "--max-num-seqs", "8",
                         log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    log = proc.log()
    proc.stop()
    assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def http(server):
    with server.client(timeout=60) as c:
        yield c
