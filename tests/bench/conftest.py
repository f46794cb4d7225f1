"""A `cserve serve` process (HTTP and gRPC) on the tiny chat model for the serving benchmark, and
`cserve bench` run as users run it: a process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.server import ServerProcess, _pythonpath, free_port

MODEL_NAME = "tiny"


@pytest.fixture(scope="session")
def bench_server(chat_model_dir, tmp_path_factory):
    grpc_port = free_port()
    proc = ServerProcess(chat_model_dir, "--served-model-name", MODEL_NAME, "--grpc-port", str(grpc_port),
                         "--disable-uvicorn-access-log", log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    proc.grpc_port = grpc_port
    yield proc
    proc.stop()


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`cserve bench ARGS` in a fresh interpreter; stdout and stderr as text."""
    env = dict(os.environ, PYTHONPATH=_pythonpath())
    return subprocess.run([sys.executable, "-m", "cserve.cli.main", "bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
