"""Hostile and careless clients against a real `cserve serve`: malformed bodies, integers outside
the engine's types, huge n / stop lists / bodies / prompts, batches with one bad prompt, clients
that leave early, colliding request ids, runaway chat templates. After each: no 5xx, the server
alive, /health answering throughout (a watcher polls it), and every counter back to 0."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import httpx
import pytest

from tests.helpers.server import ServerProcess, wait_idle

MODEL = "tiny"
MAX_SEQS = 8
BODY_LIMIT = 512 * 1024


class HealthWatch:
    """Polls /health every 50 ms on its own connection; remembers failures and the slowest answer."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.slowest = 0.0
        self.slowest_during = ""
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with self.server.client(timeout=10) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    status = c.get("/health").status_code
                    if status != 200:
                        self.failures.append(f"/health {status}")
                except httpx.HTTPError as e:
                    self.failures.append(f"/health {type(e).__name__}")
                took = time.monotonic() - t0
                if took > self.slowest:
                    self.slowest, self.slowest_during = took, os.environ.get("PYTEST_CURRENT_TEST", "")
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def server(chat_model_dir, tmp_path_factory):
    proc = ServerProcess(chat_model_dir, "--served-model-name", MODEL, "--max-model-len", "256",
                         "--max-num-seqs", str(MAX_SEQS), "--enable-server-load-tracking",
                         "--max-request-body-size", str(BODY_LIMIT), "--trust-request-chat-template",
                         log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    watch = HealthWatch(proc)
    proc.watch = watch
    yield proc
    watch.stop()
    proc.stop()
    # /health answered throughout, and promptly (a liveness bound, not a speed figure).
    assert not watch.failures, watch.failures[:5]
    print(f"slowest /health: {watch.slowest * 1000:.0f} ms during {watch.slowest_during}")
    assert watch.slowest < 0.5, f"/health took {watch.slowest:.2f} s at worst"


@pytest.fixture
def http(server):
    with server.client(timeout=60) as c:
        yield c
    with server.client(timeout=10) as c:
        check_idle(c)
    assert server.proc.poll() is None, server.log()[-3000:]


def check_idle(c: httpx.Client) -> None:
    deadline = time.monotonic() + 10
    while c.get("/load").json()["server_load"] != 0:
        assert time.monotonic() < deadline, "requests stayed registered"
        time.sleep(0.05)
    wait_idle(c)


def assert_error(r: httpx.Response, status: int = 400, *words: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    err = body["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["type"]
    for w in words:
        assert w in err["message"], err["message"]
    return err


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 4, **fields}


@pytest.mark.parametrize("body, words", [
    (b"\xff\xfe{not utf8", ("UTF-8",)),
    (b'{"model": "tiny", "prompt": "a", "temperature": NaN}', ("NaN",)),
    (b'{"model": "tiny", "prompt": "a", "top_p": Infinity}', ("Infinity",)),
    (b'{"model": "tiny", "prompt": "\\ud800 lone"}', ("surrogate",)),
    (b'["a list"]', ("object",)),
    (b"[" * 50000 + b"]" * 50000, ()),
    (b'{"model": "tiny", "prompt": ', ("JSON",)),
])
def test_malformed_bodies(http, body, words):
    for path in ("/v1/completions", "/v1/chat/completions", "/tokenize"):
        r = http.post(path, content=body, headers={"content-type": "application/json"})
        assert_error(r, 400, *words)


@pytest.mark.parametrize("fields", [
    dict(seed=2**64), dict(seed=-2**70), dict(top_k=2**40), dict(n=2**40), dict(max_tokens=2**70),
    dict(logprobs=2**40), dict(prompt=[5, 2**40]), dict(prompt=[5, -1]), dict(prompt=[[5], [2**33]]),
    dict(logit_bias={"99999999999": 1}), dict(logit_bias={"abc": 1}), dict(allowed_token_ids=[2**40]),
    dict(stop_token_ids=[-5]), dict(priority=2**40), dict(truncate_prompt_tokens=2**40),
    dict(prompt_logprobs=2**35), dict(min_tokens=2**70), dict(n=MAX_SEQS + 1), dict(best_of=2**40),
    dict(stop=["x"] * 1000), dict(stop=["y" * 5000]), dict(temperature=-1), dict(top_p=0),
    dict(allowed_token_ids=[2], min_tokens=2, max_tokens=4),
])
def test_out_of_range_fields_are_400(http, fields):
    assert_error(http.post("/v1/completions", json=completion(**fields)), 400)


@pytest.mark.parametrize("fields", [
    dict(seed=2**63 - 1), dict(top_k=-1), dict(n=MAX_SEQS), dict(temperature=1e300, seed=3),
    dict(logit_bias={"5": 1e30}), dict(stop=["q"] * 100), dict(allowed_token_ids=[5, 5, 5, 6] * 50),
    dict(stop_token_ids=[7] * 300),
])
def test_extreme_but_valid_fields_work(http, fields):
    r = http.post("/v1/completions", json=completion(**fields))
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == fields.get("n", 1)


def test_chat_out_of_range_fields(http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 2**70}
    assert_error(http.post("/v1/chat/completions", json=body), 400)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "top_logprobs": 2**40, "logprobs": True}
    assert_error(http.post("/v1/chat/completions", json=body), 400)
    assert_error(http.post("/detokenize", json={"model": MODEL, "tokens": [2**40]}), 400)


def test_body_size_limit(http):
    big = json.dumps(completion(prompt="a " * BODY_LIMIT)).encode()
    assert_error(http.post("/v1/completions", content=big, headers={"content-type": "application/json"}), 413,
                 "--max-request-body-size")

    def chunks():  # no Content-Length: the limit applies to what arrives
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    assert_error(http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_text_far_beyond_the_context_is_refused_untokenized(http):
    r = http.post("/v1/completions", json=completion(prompt="z" * 400_000))
    assert_error(r, 400, "maximum context length")


def test_a_batch_with_one_bad_prompt_submits_nothing(http):
    prompts = ["Hello there", "General Kenobi", "Hi " * 400]  # the last is over max_model_len
    assert_error(http.post("/v1/completions", json=completion(prompt=prompts)), 400, "maximum context length")
    prompts = [[5, 6], [7, 8], [9, 2**40]]
    assert_error(http.post("/v1/completions", json=completion(prompt=prompts)), 400)


def test_clients_that_leave(server, http):
    body = completion(prompt="Tell me a long story", max_tokens=200, ignore_eos=True, stream=True)
    # Before the first chunk: the request is sent and the connection closed at once.
    for _ in range(3):
        with server.client(timeout=30) as c:
            with c.stream("POST", "/v1/completions", json=body):
                pass
    # Mid-stream.
    for _ in range(3):
        with server.client(timeout=30) as c:
            with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                next(r.iter_lines())
    # Not streamed, gone before the answer: the request written and the socket closed at once (a
    # client timeout would race the server, which answers this one in ~12 ms on a fast CPU).
    payload = json.dumps({**body, "stream": False, "max_tokens": 240, "n": MAX_SEQS}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head + payload)


def test_colliding_request_ids(server, http):
    """Two concurrent requests with the same X-Request-Id are two requests."""
    results = []

    def one() -> None:
        with server.client(timeout=60) as c:
            results.append(c.post("/v1/completions", headers={"X-Request-Id": "same"},
                                  json=completion(max_tokens=12, ignore_eos=True, n=2)))

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200] * 4
    assert all(len(r.json()["choices"]) == 2 for r in results)
    assert all(c["finish_reason"] == "length" for r in results for c in r.json()["choices"])


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'a' * 1000000000 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ 9 ** 999999999 }}",
])
def test_runaway_request_chat_templates(http, template):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "chat_template": template,
            "max_completion_tokens": 2}
    assert_error(http.post("/v1/chat/completions", json=body), 400, "chat template")


def test_long_prompts_do_not_freeze_the_server(server, http):
    # Near the text limit: tokenized on the worker thread; the health watcher keeps answering.
    text = "The quick brown fox jumps over the lazy dog. " * 2000
    for _ in range(3):
        r = http.post("/tokenize", json={"model": MODEL, "prompt": text})
        assert r.status_code == 200 and r.json()["count"] > 1000
    assert_error(http.post("/v1/completions", json=completion(prompt=text)), 400, "maximum context length")


def test_huge_id_lists_are_refused_before_validation(http):
    # Validating millions of ints would hold the GIL for seconds: the raw sizes are checked first.
    assert_error(http.post("/v1/completions", json=completion(prompt=[5] * 150_000)), 400, "maximum context length")
    assert_error(http.post("/v1/completions", json=completion(allowed_token_ids=[5] * 150_000)), 400,
                 "allowed_token_ids")
    assert_error(http.post("/detokenize", json={"model": MODEL, "tokens": [5] * 150_000}), 400, "tokens")
    r = http.post("/v1/completions", json=completion(prompt=[5] * 300, truncate_prompt_tokens=20))
    assert r.status_code == 200, r.text
