"""Engine failures and shutdown as clients see them, on real `cserve serve` processes: a step
that throws (the CSERVE_TEST_FAIL_STEPS hook) gives its requests a 500, an error event or gRPC
INTERNAL while the server goes on; a sticky failure kills the engine and the process exits 1;
SIGTERM drains running requests, then ends the rest with an error and exits 0."""

from __future__ import annotations

import json
import signal
import threading
import time

import grpc
import httpx
import pytest

from cserve.grpc_client import GenerationClient
from tests.helpers.server import ServerProcess, build_chat_model, free_port, wait_idle

NAME = "tiny"
POISON = 277  # a token id of the chat model's vocabulary (289); a step that schedules it fails


def events(response: httpx.Response) -> list:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture(scope="module")
def poisoned(chat_model_dir, tmp_path_factory):
    port = free_port()
    proc = ServerProcess(chat_model_dir, "--served-model-name", NAME, "--max-model-len", "256",
                         "--enable-server-load-tracking", "--grpc-port", str(port),
                         env={"CSERVE_TEST_FAIL_STEPS": f"token:{POISON}"}, log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    proc.grpc_target = f"127.0.0.1:{port}"
    yield proc
    proc.stop()


def test_a_failed_step_is_a_500_and_the_server_goes_on(poisoned):
    bad = {"model": NAME, "prompt": [5, POISON, 7], "max_tokens": 8}
    good = {"model": NAME, "prompt": "Hello there", "max_tokens": 8, "ignore_eos": True}
    with poisoned.client(timeout=60) as http:
        r = http.post("/v1/completions", json=bad)
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["code"] == 500 and "injected step failure" in err["message"]
        with http.stream("POST", "/v1/completions", json={**bad, "stream": True}) as r:
            got = events(r)
        assert "injected step failure" in got[-2]["error"]["message"] and got[-1] == "[DONE]"
        assert not any("choices" in e and any(c.get("finish_reason") for c in e["choices"])
                       for e in got if isinstance(e, dict))
        chat = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 4}
        assert http.post("/v1/chat/completions", json=chat).status_code == 200
        # Served normally before and after; nothing stays registered.
        for _ in range(2):
            r = http.post("/v1/completions", json=good)
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
        assert http.get("/health").status_code == 200
        assert http.get("/load").json()["server_load"] == 0
        wait_idle(http)
        # Counted as vLLM counts engine failures: finished_reason="error".
        errors = [line for line in http.get("/metrics").text.splitlines()
                  if line.startswith("vllm:request_success_total") and 'finished_reason="error"' in line]
        assert errors and float(errors[0].rsplit(" ", 1)[1]) >= 2


def test_a_failed_step_is_grpc_internal(poisoned):
    with GenerationClient(poisoned.grpc_target, timeout=60) as client:
        with pytest.raises(grpc.RpcError) as info:
            list(client.generate(token_ids=[5, POISON, 7], max_tokens=4))
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "injected step failure" in info.value.details()
        ok = list(client.generate(text="Hello", max_tokens=3, temperature=0, ignore_eos=True))
        assert ok[-1].finish_reason == "length"


def test_a_sticky_failure_kills_the_engine_and_exits_1(chat_model_dir, tmp_path):
    proc = ServerProcess(chat_model_dir, "--served-model-name", NAME, "--max-model-len", "256",
                         env={"CSERVE_TEST_FAIL_STEPS": "from_step:2"}, log_dir=tmp_path)
    statuses = []
    with proc:  # stopped whatever happens below
        proc.wait_ready()
        with proc.client(timeout=30) as http:
            for _ in range(4):  # steps 0-1 work; 2, 3, 4 fail; the third failure in a row kills the engine
                try:
                    r = http.post("/v1/completions", json={"model": NAME, "prompt": "Hi", "max_tokens": 30,
                                                           "ignore_eos": True})
                    statuses.append(r.status_code)
                    assert r.status_code in (500, 503), (r.status_code, r.text)
                    if r.headers.get("content-type") == "application/json":
                        assert r.json()["error"]["code"] == r.status_code
                except httpx.TransportError:
                    statuses.append("gone")
                try:
                    health = http.get("/health").status_code
                    assert health in (200, 503)
                except httpx.TransportError:
                    pass
        rc = proc.proc.wait(30)
    log = proc.log()
    assert rc == 1, log[-3000:]
    assert "the engine is dead" in log.lower() or "The engine is dead" in log
    assert statuses[0] == 500, statuses


def test_sigterm_drains_then_ends_the_rest_with_an_error(tmp_path):
    # A request far longer than the drain window however fast the tiny model decodes (8,000
    # tokens took under 2 s): a copy of the chat model with room for 130,000.
    model_dir = build_chat_model(tmp_path / "long_chat", max_position_embeddings=131072)
    proc = ServerProcess(str(model_dir), "--served-model-name", NAME, "--max-model-len", "131072",
                         "--shutdown-timeout", "2", log_dir=tmp_path)
    with proc:  # stopped whatever happens below
        proc.wait_ready()
        long_body = {"model": NAME, "prompt": "Tell me a long story", "max_tokens": 130000, "ignore_eos": True,
                     "stream": True}
        short_body = {"model": NAME, "prompt": "Hi", "max_tokens": 40, "ignore_eos": True, "stream": True}
        got: dict = {}
        first = threading.Event()

        def stream(name: str, body: dict) -> None:
            with proc.client(timeout=60) as c:
                with c.stream("POST", "/v1/completions", json=body) as r:
                    lines = []
                    for line in r.iter_lines():
                        lines.append(line)
                        first.set()
                    got[name] = [json.loads(x[6:]) if x[6:] != "[DONE]" else "[DONE]"
                                 for x in lines if x.startswith("data: ")]

        long_thread = threading.Thread(target=stream, args=("long", long_body))
        long_thread.start()
        assert first.wait(30)
        t0 = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New connections are refused (the listener is closed).
        with pytest.raises(httpx.TransportError):
            with proc.client(timeout=5) as c:
                c.post("/v1/completions", json=short_body)
        long_thread.join(30)
        rc = proc.proc.wait(30)
        elapsed = time.monotonic() - t0
    log = proc.log()
    assert rc == 0, log[-3000:]
    events_ = got["long"]
    assert events_[-1] == "[DONE]"
    assert "shutting down" in events_[-2]["error"]["message"], events_[-2]
    assert elapsed >= 2.0  # it had its --shutdown-timeout to finish
    assert "Traceback" not in log
