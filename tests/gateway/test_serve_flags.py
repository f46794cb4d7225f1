"""`cserve serve --gateway-address ...` end to end: real worker processes registering with the test
gateway of our protocol, and with sglang-router and vllm-router from PyPI started empty."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import MODEL, completed
from tests.helpers.gateway import ROUTERS, RouterProcess, TestGateway, router_available, wait_for
from tests.helpers.server import ServerProcess

API_KEY = "sekret-key-456"


def worker(model_dir: str, log_dir: Path, gateway: str, *extra: str) -> ServerProcess:
    proc = ServerProcess(model_dir, "--served-model-name", MODEL, "--max-model-len", "256", "--gateway-address",
                         gateway, "--heartbeat-interval", "0.5", *extra, log_dir=log_dir)
    proc.wait_ready()
    return proc


def listed(router: RouterProcess, proc: ServerProcess) -> dict:
    return next((w for w in router.workers() if w["url"].rstrip("/") == proc.base_url), {})


def test_our_protocol(chat_model_dir, tmp_path):
    with TestGateway() as gw:
        proc = worker(chat_model_dir, tmp_path, gw.url, "--api-key", API_KEY)
        try:
            reg = wait_for(lambda: gw.snapshot("registrations"), 30, what="a registration")[0]
            assert reg["url"] == proc.base_url and reg["models"] == [MODEL] and reg["backend"] == "vllm"
            assert API_KEY not in repr(reg) and reg["backend_args"]["max_model_len"] == 256
            wait_for(lambda: len(gw.snapshot("heartbeats")) >= 3, 10, what="heartbeats")
            wait_for(lambda: gw.snapshot("logs"), 10, what="log records")
        finally:
            assert proc.stop() == 0
        assert gw.snapshot("deregistrations") == [reg["worker_id"]]


@pytest.mark.parametrize("kind", ROUTERS)
def test_two_workers_behind_a_router(kind, chat_model_dir, tmp_path):
    if not router_available(kind):
        pytest.skip(f"{kind} is not installed (pip install {kind})")
    router = RouterProcess(kind, tmp_path)
    procs: list[ServerProcess] = []
    try:
        router.wait_ready()
        procs = [worker(chat_model_dir, tmp_path, router.url) for _ in range(2)]
        for p in procs:
            wait_for(lambda p=p: listed(router, p).get("is_healthy"), 30, what=f"{p.base_url} healthy in {kind}")
        if kind == "sglang-router":  # vllm-router lists model_id "unknown" for workers it adds by URL
            assert all(listed(router, p)["model_id"] == MODEL for p in procs)
        assert [m["id"] for m in httpx.get(router.url + "/v1/models", timeout=10).json()["data"]] == [MODEL]

        before = [completed(p) for p in procs]
        with httpx.Client(base_url=router.url, timeout=60) as http:
            for i in range(4):
                assert http.post("/v1/completions", json={"model": MODEL, "prompt": f"Hello {i}",
                                                          "max_tokens": 4}).status_code == 200
                assert http.post("/v1/chat/completions", json={
                    "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": f"Hi {i}"}]},
                ).status_code == 200
        served = [completed(p) - b for p, b in zip(procs, before)]
        assert sum(served) == 8 and all(n >= 2 for n in served), served

        # A killed worker cannot deregister: the router's health checks find it gone.
        procs[0].stop(signal.SIGKILL)
        wait_for(lambda: not listed(router, procs[0]).get("is_healthy"), 30, what="the killed worker unhealthy")
        before = completed(procs[1])
        with httpx.Client(base_url=router.url, timeout=60) as http:
            for i in range(4):
                r = http.post("/v1/completions", json={"model": MODEL, "prompt": f"After {i}", "max_tokens": 4})
                assert r.status_code == 200, r.text
        assert completed(procs[1]) - before == 4

        # A worker that shuts down deregisters.
        assert procs[1].stop() == 0
        wait_for(lambda: not listed(router, procs[1]), 10, what="the stopped worker deregistered")
    finally:
        for p in procs:
            p.stop(signal.SIGKILL)
        router.stop()
