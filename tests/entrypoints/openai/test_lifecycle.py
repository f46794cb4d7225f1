"""Concurrency, capacity, client disconnects and shutdown of a `cserve serve` process."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.helpers.server import ServerProcess, abort_count, wait_idle

NAME = "tiny"


@pytest.fixture(scope="module")
def busy_server(chat_model_dir, tmp_path_factory):
    proc = ServerProcess(chat_model_dir, "--served-model-name", NAME, "--max-model-len", "1024",
                         "--max-num-seqs", "16", log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def slow_server(chat_model_dir, tmp_path_factory):
    """One sequence at a time and two requests in flight at most: long requests stay long."""
    proc = ServerProcess(chat_model_dir, "--served-model-name", NAME, "--max-model-len", "8192",
                         "--max-num-seqs", "1", env={"CSERVE_MAX_PENDING_REQUESTS": "2"},
                         log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    proc.stop()

LONG = {"model": NAME, "prompt": "Tell me a long story", "max_tokens": 8000, "ignore_eos": True}


def test_64_concurrent_requests_all_complete(busy_server):
    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=busy_server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        async def one(i):
            if i % 2:
                r = await client.completions.create(model=NAME, prompt=f"Request {i}:", max_tokens=16,
                                                    extra_body={"ignore_eos": True})
                return r.usage.completion_tokens
            stream = await client.chat.completions.create(
                model=NAME, messages=[{"role": "user", "content": f"Request {i}"}], max_tokens=16, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
            return usage.completion_tokens
        try:
            return await asyncio.gather(*(one(i) for i in range(64)))
        finally:
            await client.close()

    assert asyncio.run(main()) == [16] * 64
    with busy_server.client() as http:
        wait_idle(http)


def test_streaming_disconnect_aborts_and_frees_blocks(slow_server):
    with slow_server.client(timeout=30) as http:
        before = abort_count(http)
        with http.stream("POST", "/v1/completions", json=dict(LONG, stream=True)) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        # The connection is closed: the request is aborted and its blocks freed.
        wait_idle(http)
        assert abort_count(http) == before + 1


def test_non_streaming_disconnect_aborts(slow_server):
    with slow_server.client(timeout=30) as http:
        before = abort_count(http)
    with slow_server.client(timeout=0.5) as short:
        with pytest.raises(httpx.TimeoutException):
            short.post("/v1/completions", json=LONG)
    with slow_server.client(timeout=30) as http:
        wait_idle(http)
        assert abort_count(http) == before + 1


def test_503_when_at_capacity(slow_server):
    async def main():
        async with httpx.AsyncClient(base_url=slow_server.base_url, timeout=60) as c:
            streams = []
            try:
                for _ in range(2):  # one running, one waiting: the server's limit
                    s = c.stream("POST", "/v1/completions", json=dict(LONG, stream=True))
                    r = await s.__aenter__()
                    assert r.status_code == 200
                    streams.append(s)
                return await c.post("/v1/completions", json={"model": NAME, "prompt": "x", "max_tokens": 1})
            finally:
                for s in streams:
                    await s.__aexit__(None, None, None)

    over = asyncio.run(main())
    assert over.status_code == 503, over.text
    assert over.json()["error"]["code"] == 503
    with slow_server.client() as http:
        wait_idle(http)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(chat_model_dir, tmp_path, sig):
    proc = ServerProcess(chat_model_dir, "--max-model-len", "256", log_dir=tmp_path)
    proc.wait_ready()
    rc = proc.stop(sig)
    log = proc.log()
    assert rc == 0, log
    assert "Traceback" not in log
    assert "Shutting down" in log or "Finished server process" in log
