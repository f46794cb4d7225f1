"""--api-server-count 2: two API server processes on one port, over replica processes of the
engine; answers as one server's, /metrics sums both, SIGTERM stops everything, and a process that
dies stops the server with status 1."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx

from tests.helpers.server import ServerProcess, child_processes, process_gone


def _greedy(base_url: str, i: int) -> str:
    with httpx.Client(base_url=base_url, timeout=60) as http:  # a new connection each time
        r = http.post("/v1/completions", json={"model": "m", "prompt": f"Story {i}:", "max_tokens": 16,
                                              "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]


def test_two_api_servers_answer_as_one(chat_model_dir, tmp_path):
    with ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256", log_dir=tmp_path) as one:
        one.wait_ready(timeout=120)
        expected = [_greedy(one.base_url, i) for i in range(8)]
    server = ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256",
                           "--api-server-count", "2", "-dp", "2", log_dir=tmp_path)
    try:
        server.wait_ready(timeout=120)
        apis = child_processes(server.proc.pid, "api_server_process")
        replicas = child_processes(server.proc.pid, "cserve.engine.replica")
        assert len(apis) == 2 and len(replicas) == 2
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda i: _greedy(server.base_url, i), range(8)))
        assert got == expected
        # Whichever API server answers /metrics counts every request (both servers' counters).
        deadline = time.monotonic() + 10
        while True:
            seen = []
            for _ in range(6):
                with httpx.Client(base_url=server.base_url) as http:
                    text = http.get("/metrics").text
                seen.append(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                if line.startswith("vllm:generation_tokens_total{")))
            if set(seen) == {8 * 16} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert set(seen) == {8 * 16}, seen
        assert server.stop() == 0
        assert all(process_gone(pid) for pid in apis + replicas)
    finally:
        server.stop()


def test_a_dead_api_server_stops_the_server(chat_model_dir, tmp_path):
    server = ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256",
                           "--api-server-count", "2", log_dir=tmp_path)
    try:
        server.wait_ready(timeout=120)
        apis = child_processes(server.proc.pid, "api_server_process")
        replicas = child_processes(server.proc.pid, "cserve.engine.replica")
        assert len(apis) == 2 and len(replicas) == 1
        os.kill(apis[1], signal.SIGKILL)
        assert server.proc.wait(timeout=60) == 1
        assert "API server 1 exited" in server.log()
        assert all(process_gone(pid) for pid in apis + replicas)
    finally:
        server.stop()
