"""Two `cserve serve` workers on the tiny chat model, shared by a module, and helpers to read them."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers.server import ServerProcess

MODEL = "tiny-chat"


def completed(worker: ServerProcess) -> float:
    """vllm:request_success_total summed over finish reasons: requests this worker answered."""
    text = httpx.get(worker.base_url + "/metrics", timeout=5.0).text
    return sum(float(m.group(1)) for m in re.finditer(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def workers(chat_model_dir, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    procs = [ServerProcess(chat_model_dir, "--served-model-name", MODEL, "--max-model-len", "256",
                           log_dir=log_dir) for _ in range(2)]
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.stop()
