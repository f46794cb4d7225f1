"""Gateways for the tests: TestGateway, a small real HTTP server speaking cserve's gateway protocol
(docs/gateway.md) in a thread, recording what workers send; RouterProcess, sglang-router or
vllm-router from PyPI started empty on 127.0.0.1 as a process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional

import httpx

from tests.helpers.server import free_port


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """predicate()'s first truthy value, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class TestGateway:
    """Our protocol on 127.0.0.1:port. A restart (stop, then start on the same port) forgets every
    worker, as a real gateway restart does. Thread-safe views of what arrived: registrations,
    heartbeats (worker id, monotonic time, body), logs (records), dropped (sum), deregistrations."""

    __test__ = False  # not a test class

    def __init__(self, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.registrations: list[dict] = []
        self.heartbeats: list[tuple[str, float, dict]] = []
        self.logs: list[dict] = []
        self.dropped = 0
        self.deregistrations: list[str] = []
        self.health_at_registration: list[int] = []  # the worker's /health status as each registration arrived
        self.workers: dict[str, dict] = {}
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "TestGateway":
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a) -> None:
                pass

            def _reply(self, status: int, body: Optional[dict] = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                length = int(self.headers.get("content-length") or 0)
                return json.loads(self.rfile.read(length)) if length else {}

            def do_GET(self) -> None:
                if self.path == "/v1/gateway":
                    return self._reply(200, {"protocol": "cserve-gateway", "version": 1})
                if self.path == "/v1/workers":
                    with gateway.lock:
                        return self._reply(200, {"workers": list(gateway.workers.values())})
                self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = self._body()
                now = time.monotonic()
                if self.path == "/v1/workers/register":
                    if not body.get("worker_id") or not body.get("url"):
                        return self._reply(400, {"error": "worker_id and url are required"})
                    try:  # a worker registers once it serves: its /health answers by then
                        health = httpx.get(body["url"] + "/health", timeout=2.0).status_code
                    except httpx.HTTPError:
                        health = 0
                    with gateway.lock:
                        gateway.health_at_registration.append(health)
                        gateway.registrations.append(body)
                        gateway.workers[body["worker_id"]] = body
                    return self._reply(201, {"worker_id": body["worker_id"]})
                m = re.fullmatch(r"/v1/workers/([^/]+)/(heartbeat|logs)", self.path)
                if m is None:
                    return self._reply(404, {"error": "not found"})
                worker_id, what = m.groups()
                with gateway.lock:
                    if worker_id not in gateway.workers:
                        return self._reply(404, {"error": f"unknown worker {worker_id}"})
                    if what == "heartbeat":
                        gateway.heartbeats.append((worker_id, now, body))
                    else:
                        gateway.logs.extend(body.get("records", []))
                        gateway.dropped += int(body.get("dropped", 0))
                self._reply(204)

            def do_DELETE(self) -> None:
                m = re.fullmatch(r"/v1/workers/([^/]+)", self.path)
                with gateway.lock:
                    if m is None or m.group(1) not in gateway.workers:
                        return self._reply(404, {"error": "unknown worker"})
                    del gateway.workers[m.group(1)]
                    gateway.deregistrations.append(m.group(1))
                self._reply(204)

        class Server(ThreadingHTTPServer):
            """Remembers its connections, so that stop() closes them too (a stopped gateway answers
            nothing, not even on a client's kept-alive connection)."""

            daemon_threads = True

            def __init__(self, *a) -> None:
                self.connections: set = set()
                super().__init__(*a)

            def process_request(self, request, client_address) -> None:
                self.connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request) -> None:
                self.connections.discard(request)
                super().shutdown_request(request)

        self._server = Server(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for conn in list(self._server.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                    conn.close()
                except OSError:
                    pass
            self._thread.join(5)
            self._server = None
        with self.lock:
            self.workers.clear()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def snapshot(self, name: str) -> list:
        with self.lock:
            return list(getattr(self, name))

    def __enter__(self) -> "TestGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


ROUTERS = ("sglang-router", "vllm-router")


def router_available(kind: str) -> bool:
    module = {"sglang-router": "sglang_router", "vllm-router": "vllm_router"}[kind]
    import importlib.util

    return importlib.util.find_spec(module) is not None


class RouterProcess:
    """sglang-router (`python -m sglang_router.launch_router`) or vllm-router (the `vllm-router`
    script) on 127.0.0.1, started with no workers, round-robin, health checks every second."""

    def __init__(self, kind: str, log_dir: Path, *extra: str, port: Optional[int] = None) -> None:
        self.kind = kind
        self.port = port or free_port()
        common = ["--host", "127.0.0.1", "--port", str(self.port), "--policy", "round_robin",
                  "--prometheus-port", str(free_port()), "--health-check-interval-secs", "1",
                  "--health-failure-threshold", "2", "--health-success-threshold", "1",
                  "--worker-startup-timeout-secs", "30", "--worker-startup-check-interval", "1", *extra]
        if kind == "sglang-router":
            cmd = [sys.executable, "-m", "sglang_router.launch_router", *common]
        else:
            script = shutil.which("vllm-router") or str(Path(sys.executable).parent / "vllm-router")
            cmd = [script, *common]
        self.log_path = log_dir / f"{kind}-{self.port}-{time.time_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "NO_COLOR": "1"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(self.url + "/liveness", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, interval=0.1, what=f"{self.kind} to listen")

    def workers(self) -> list[dict]:
        """GET /workers: [{url, model_id, is_healthy, ...}] (both routers answer it)."""
        return httpx.get(self.url + "/workers", timeout=5.0).json()["workers"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
