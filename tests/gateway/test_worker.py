"""GatewayWorker inside the real server: the app of `cserve serve` (build_state, build_app) on
uvicorn in a thread, the worker started from the startup hook and stopped at shutdown, against the
test gateway of our protocol. Registration content, heartbeat timing and load, log records, a gateway
restart (re-registration; serving goes on while it is down), deregistration at shutdown."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from tests.gateway.conftest import MODEL
from tests.helpers.gateway import TestGateway, wait_for
from tests.helpers.server import free_port

API_KEY = "sekret-key-123"
INTERVAL = 0.5


class InProcessServer:
    """The server app with a GatewayWorker wired as `cserve serve` wires it."""

    def __init__(self, model_dir: str, gateway_address: str, **flags) -> None:
        import uvicorn

        from cserve.cli.args import parse_serve_args
        from cserve.entrypoints.openai.api_server import build_app, build_state
        from cserve.gateway import GatewayWorker

        self.port = free_port()
        args = parse_serve_args([model_dir, "--served-model-name", MODEL, "--max-model-len", "256",
                                 "--api-key", API_KEY, "--host", "127.0.0.1", "--port", str(self.port)])
        args.gateway_address = gateway_address
        args.heartbeat_interval = INTERVAL
        for name, value in flags.items():
            setattr(args, name, value)
        self.state = build_state(args)
        self.gateway = GatewayWorker(self.state, args)
        app = build_app(self.state, on_startup=self.gateway.start, on_shutdown=self.gateway.stop)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, loop="asyncio",
                                                    log_level="info", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 60, what="the server to listen")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def complete(self, prompt: str = "Hello") -> httpx.Response:
        return httpx.post(self.url + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30,
                          json={"model": MODEL, "prompt": prompt, "max_tokens": 8, "ignore_eos": True})

    def stop(self) -> float:
        """Seconds the shutdown took."""
        t0 = time.monotonic()
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()
        return time.monotonic() - t0


@pytest.fixture(scope="module")
def gateway():
    with TestGateway() as gw:
        yield gw


@pytest.fixture(scope="module")
def server(chat_model_dir, gateway, monkeypatch_module):
    monkeypatch_module.setenv("CSERVE_NUM_THREADS", "1")
    srv = InProcessServer(chat_model_dir, gateway.url)
    yield srv
    if srv.thread.is_alive():
        srv.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_registration_after_ready_with_redacted_backend_args(server, gateway):
    from cserve import __version__

    reg = wait_for(lambda: gateway.snapshot("registrations"), 30, what="a registration")[0]
    assert gateway.snapshot("health_at_registration")[0] == 200
    assert reg["url"] == server.url and reg["models"] == [MODEL] and reg["backend"] == "vllm"
    assert reg["version"] == __version__ and reg["worker_id"]
    assert "openai" in reg["capabilities"]["apis"] and reg["capabilities"]["max_model_len"] == 256
    assert reg["backend_args"]["max_model_len"] == 256
    assert API_KEY not in repr(reg)
    assert reg["backend_args"]["api_key"] in ("***", ["***"])
    assert server.gateway.kind == "cserve"


def test_heartbeats_every_interval_with_load(server, gateway):
    for i in range(3):
        assert server.complete(f"Hi {i}").status_code == 200
    wait_for(lambda: any(b["load"]["generation_tokens_per_s"] > 0 for _, _, b in gateway.snapshot("heartbeats")),
             15, what="a heartbeat with throughput")
    n = len(gateway.snapshot("heartbeats"))
    wait_for(lambda: len(gateway.snapshot("heartbeats")) >= n + 4, 15, what="four more heartbeats")
    beats = gateway.snapshot("heartbeats")[n - 1:]
    gaps = [b[1] - a[1] for a, b in zip(beats, beats[1:])]
    assert all(0.3 * INTERVAL < g < 3 * INTERVAL for g in gaps), gaps
    load = beats[-1][2]["load"]
    assert set(load) >= {"running", "waiting", "kv_cache_usage", "generation_tokens_per_s", "prompt_tokens_per_s"}
    assert 0.0 <= load["kv_cache_usage"] <= 1.0


def test_log_records_arrive(server, gateway):
    logging.getLogger("cserve.gateway.test").warning("marker one %d", 1)
    wait_for(lambda: any(r["message"] == "marker one 1" for r in gateway.snapshot("logs")), 10, what="the record")
    record = next(r for r in gateway.snapshot("logs") if r["message"] == "marker one 1")
    assert record["level"] == "WARNING" and record["logger"] == "cserve.gateway.test"
    # uvicorn's access log is streamed too.
    assert server.complete().status_code == 200
    wait_for(lambda: any("/v1/completions" in r["message"] for r in gateway.snapshot("logs")
                         if r["logger"] == "uvicorn.access"), 10, what="an access-log record")


def test_gateway_restart_serving_goes_on_and_the_worker_registers_again(server, gateway):
    worker_id = gateway.snapshot("registrations")[0]["worker_id"]
    registrations = len(gateway.snapshot("registrations"))
    gateway.stop()
    try:
        logging.getLogger("cserve.gateway.test").warning("while the gateway is down")
        t0 = time.monotonic()
        for i in range(5):
            assert server.complete(f"down {i}").status_code == 200
        assert time.monotonic() - t0 < 10
        time.sleep(3 * INTERVAL)  # heartbeats fail meanwhile
        assert server.complete().status_code == 200
    finally:
        gateway.start()
    wait_for(lambda: len(gateway.snapshot("registrations")) > registrations, 15, what="a new registration")
    assert gateway.snapshot("registrations")[-1]["worker_id"] == worker_id
    wait_for(lambda: any(r["message"] == "while the gateway is down" for r in gateway.snapshot("logs")), 10,
             what="the records logged while the gateway was down")
    n = len(gateway.snapshot("heartbeats"))
    wait_for(lambda: len(gateway.snapshot("heartbeats")) > n, 10, what="heartbeats again")


def test_shutdown_deregisters_in_bounded_time(server, gateway):
    worker_id = gateway.snapshot("registrations")[-1]["worker_id"]
    took = server.stop()
    assert gateway.snapshot("deregistrations") == [worker_id]
    assert took < 10


def test_an_unreachable_gateway_changes_nothing_for_clients(chat_model_dir, monkeypatch):
    monkeypatch.setenv("CSERVE_NUM_THREADS", "1")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv = InProcessServer(chat_model_dir, dead, gateway_kind="auto")
    try:
        for i in range(3):
            assert srv.complete(f"Hi {i}").status_code == 200
        assert not srv.gateway.registered
    finally:
        took = srv.stop()
    assert took < 10
