"""Each gateway client against the real gateway it speaks to: sglang-router and vllm-router from
PyPI started empty, and the test gateway of our protocol; two real `cserve serve` workers."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from cserve.gateway.clients import GatewayUnavailable, detect_kind, make_client
from cserve.gateway.registration import Registration
from tests.gateway.conftest import MODEL, completed
from tests.helpers.gateway import ROUTERS, RouterProcess, TestGateway, router_available, wait_for


def registration(worker) -> Registration:
    return Registration(worker_id=f"w-{worker.port}", url=worker.base_url, models=[MODEL], backend="vllm",
                        backend_args={"model": "m", "api_key": "***"}, version="0", capabilities={})


def call(kind: str, address: str, method: str, *args):
    """One client call on a fresh event loop (a client per call, as a restarted worker would have)."""

    async def run():
        async with httpx.AsyncClient(timeout=10.0) as http:
            client = make_client(kind, http, address)
            if method != "register" and kind == "sglang-router":
                client.router_id = None  # found again by URL
            return await getattr(client, method)(*args)

    return asyncio.run(run())


def detect(address: str) -> str:
    async def run():
        async with httpx.AsyncClient(timeout=5.0) as http:
            return await detect_kind(http, address)

    return asyncio.run(run())


def listed(router: RouterProcess, worker) -> dict:
    return next((w for w in router.workers() if w["url"].rstrip("/") == worker.base_url), {})


@pytest.fixture(params=ROUTERS)
def router(request, tmp_path):
    if not router_available(request.param):
        pytest.skip(f"{request.param} is not installed (pip install {request.param})")
    proc = RouterProcess(request.param, tmp_path)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_routers_register_route_over_both_workers_and_deregister(router, workers):
    kind = router.kind
    assert detect(router.url) == kind
    regs = [registration(w) for w in workers]
    for reg in regs:
        call(kind, router.url, "register", reg)
    for w in workers:
        wait_for(lambda w=w: listed(router, w).get("is_healthy"), 30, what=f"{w.base_url} healthy in {kind}")
    if kind == "sglang-router":  # vllm-router lists model_id "unknown" unless the worker has /get_server_info
        assert all(listed(router, w)["model_id"] == MODEL for w in workers)
    models = httpx.get(router.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    # Registering again is harmless: still one entry per worker.
    call(kind, router.url, "register", regs[0])
    assert sum(w["url"].rstrip("/") == workers[0].base_url for w in router.workers()) == 1
    assert all(call(kind, router.url, "heartbeat", reg, {}) for reg in regs)

    before = [completed(w) for w in workers]
    with httpx.Client(base_url=router.url, timeout=60) as http:
        for i in range(4):
            r = http.post("/v1/completions", json={"model": MODEL, "prompt": f"Hello {i}", "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] is not None
            r = http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                                                        "messages": [{"role": "user", "content": f"Hi {i}"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["role"] == "assistant"
    served = [completed(w) - b for w, b in zip(workers, before)]
    assert sum(served) == 8 and all(n >= 2 for n in served), served

    call(kind, router.url, "deregister", regs[0])
    wait_for(lambda: not listed(router, workers[0]), 10, what="deregistration")
    assert listed(router, workers[1])
    assert not call(kind, router.url, "heartbeat", regs[0], {})
    call(kind, router.url, "deregister", regs[0])  # twice is harmless


def test_a_restarted_router_has_forgotten_the_worker(router, workers, tmp_path):
    """Same port, new process: the worker must register again."""
    kind = router.kind
    reg = registration(workers[0])
    call(kind, router.url, "register", reg)
    wait_for(lambda: listed(router, workers[0]), 30, what="registration")
    assert call(kind, router.url, "heartbeat", reg, {})
    router.stop()
    with pytest.raises(GatewayUnavailable):
        call(kind, router.url, "heartbeat", reg, {})
    fresh = RouterProcess(kind, tmp_path, port=router.port)
    try:
        fresh.wait_ready()
        assert fresh.url == router.url
        assert not call(kind, fresh.url, "heartbeat", reg, {})
        call(kind, fresh.url, "register", reg)
        wait_for(lambda: listed(fresh, workers[0]), 30, what="registration again")
        assert call(kind, fresh.url, "heartbeat", reg, {})
    finally:
        fresh.stop()


def test_our_protocol_against_the_test_gateway(workers):
    with TestGateway() as gw:
        assert detect(gw.url) == "cserve"
        reg = registration(workers[0])
        call("cserve", gw.url, "register", reg)
        assert gw.snapshot("registrations")[0]["url"] == workers[0].base_url
        assert call("cserve", gw.url, "heartbeat", reg, {"running": 0})
        assert call("cserve", gw.url, "send_logs", reg, [{"message": "m"}], 3)
        assert gw.snapshot("logs") == [{"message": "m"}] and gw.dropped == 3
        gw.restart()
        assert not call("cserve", gw.url, "heartbeat", reg, {})
        assert not call("cserve", gw.url, "send_logs", reg, [], 0)
        call("cserve", gw.url, "register", reg)
        call("cserve", gw.url, "deregister", reg)
        assert gw.snapshot("deregistrations") == [reg.worker_id]
        call("cserve", gw.url, "deregister", reg)  # 404: already gone


def test_detection_falls_back_to_ours_and_reports_an_unreachable_gateway(workers):
    # Something that answers but speaks neither router's API (here a cserve worker) is taken for ours.
    assert detect(workers[0].base_url) == "cserve"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        with pytest.raises(GatewayUnavailable):
            detect(f"127.0.0.1:{port}")
