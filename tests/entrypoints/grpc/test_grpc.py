"""cserve.v1.Generation over a real channel to a real `cserve serve --grpc-port` process: the
same results as HTTP, tokenize round trips, cancellation, errors, auth, TLS, health and
reflection."""

from __future__ import annotations

import subprocess

import grpc
import pytest

from cserve.grpc_client import GenerationClient
from cserve.v1 import generation_pb2 as pb
from tests.helpers.server import ServerProcess, abort_count, free_port, wait_idle

KEY = "sk-grpc"
AUTH = {"Authorization": f"Bearer {KEY}"}
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(chat_model_dir, tmp_path_factory):
    port = free_port()
    proc = ServerProcess(chat_model_dir, "--served-model-name", "tiny", "--max-model-len", "8192", "--api-key", KEY,
                         "--grpc-port", str(port), "--max-num-seqs", "4",
                         env={"CSERVE_MAX_PENDING_REQUESTS": "3"}, log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    proc.grpc_target = f"127.0.0.1:{port}"
    yield proc
    proc.stop()


@pytest.fixture
def client(server):
    with GenerationClient(server.grpc_target, api_key=KEY, timeout=60) as c:
        yield c


def http_post(server, path, body):
    with server.client(timeout=60) as http:
        r = http.post(path, json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()


def test_streamed_generation_equals_http(server, client):
    greedy = dict(temperature=0.0, max_tokens=20, ignore_eos=True)
    responses = list(client.generate(text="The quick brown fox", stream=True, **greedy))
    assert len(responses) > 1 and responses[-1].finish_reason == "length"
    assert all(not r.finish_reason for r in responses[:-1])
    assert responses[-1].HasField("usage") and not any(r.HasField("usage") for r in responses[:-1])
    text = "".join(r.text for r in responses)
    ids = [t for r in responses for t in r.token_ids]
    http = http_post(server, "/v1/completions", {"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 20,
                                                 "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    assert text == http["choices"][0]["text"] and ids == http["choices"][0]["token_ids"]
    usage = responses[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (http["usage"]["prompt_tokens"], 20)
    assert list(responses[0].prompt_token_ids) == http["choices"][0]["prompt_token_ids"]

    chat = client.complete(messages=MESSAGES, stream=False, **greedy)
    http = http_post(server, "/v1/chat/completions", {"model": "tiny", "messages": MESSAGES, "max_tokens": 20,
                                                      "temperature": 0, "ignore_eos": True})
    assert chat.texts[0] == http["choices"][0]["message"]["content"]
    assert chat.usage.prompt_tokens == http["usage"]["prompt_tokens"]


def test_n_logprobs_stop_and_token_ids(client):
    out = client.complete(token_ids=client.tokenize("Hello world"), n=2, seed=3, temperature=1.0, max_tokens=8,
                          ignore_eos=True, logprobs=2)
    assert sorted(out.texts) == [0, 1] and out.usage.completion_tokens == 16
    for i in (0, 1):
        assert len(out.logprobs[i]) == 8 and all(len(p.top) == 2 for p in out.logprobs[i])
        assert [p.chosen.token_id for p in out.logprobs[i]] == out.token_ids[i]
    base = client.complete(text="The quick brown fox", temperature=0, max_tokens=20, ignore_eos=True)
    stop = base.texts[0][6:9]
    cut = base.texts[0].find(stop)
    stopped = client.complete(text="The quick brown fox", temperature=0, max_tokens=20, ignore_eos=True, stop=[stop])
    assert stopped.texts[0] == base.texts[0][:cut]
    assert stopped.finish_reasons[0] == "stop" and stopped.stop_reasons[0] == stop


def test_tokenize_detokenize_models(server, client):
    ids = client.tokenize("Hello world!")
    assert client.detokenize(ids) == "Hello world!"
    assert ids == http_post(server, "/tokenize", {"prompt": "Hello world!"})["tokens"]
    chat_ids = client.tokenize(messages=MESSAGES)
    assert chat_ids == http_post(server, "/tokenize", {"messages": MESSAGES})["tokens"]
    assert [m.id for m in client.list_models()] == ["tiny"]
    info = client.model_info()
    assert list(info.served_model_names) == ["tiny"] and info.max_model_len == 8192
    assert info.vocab_size > 0 and list(info.eos_token_ids) == [2] and info.architecture == "LlamaForCausalLM"


def test_cancelling_aborts_and_frees_blocks(server, client):
    with server.client(headers=AUTH) as http:
        before = abort_count(http)
        call = client.generate(text="A long story", max_tokens=8000, ignore_eos=True)
        next(call)
        next(call)
        call.cancel()
        wait_idle(http)
        assert abort_count(http) == before + 1


def test_error_codes(server, client):
    cases = [
        (dict(text="Hi", temperature=-1.0), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(text="Hi", model="nope"), grpc.StatusCode.NOT_FOUND),
        (dict(text="word " * 9000, max_tokens=1), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for kw, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            list(client.generate(**kw))
        assert e.value.code() == code, e.value.details()
        assert e.value.details()
    with pytest.raises(grpc.RpcError) as e:  # no input at all
        list(client.stub.Generate(pb.GenerateRequest(), metadata=client.metadata))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.model_info("nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        client.detokenize([10**7])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_overload_is_resource_exhausted(server, client):
    calls = [client.generate(text="Long", max_tokens=8000, ignore_eos=True) for _ in range(3)]
    try:
        for c in calls:
            next(c)
        with pytest.raises(grpc.RpcError) as e:
            list(client.generate(text="x", max_tokens=1))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for c in calls:
            c.cancel()
    with server.client(headers=AUTH) as http:
        wait_idle(http)


def test_auth_health_and_reflection(server):
    with GenerationClient(server.grpc_target) as anonymous:
        with pytest.raises(grpc.RpcError) as e:
            anonymous.list_models()
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            list(anonymous.generate(text="Hi", max_tokens=1))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with GenerationClient(server.grpc_target, api_key="wrong") as wrong:
        with pytest.raises(grpc.RpcError) as e:
            wrong.tokenize("x")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.grpc_target) as channel:  # no key: health and reflection are open
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "cserve.v1.Generation"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                               timeout=10))
        names = {s.name for s in reply.list_services_response.service}
        assert {"cserve.v1.Generation", "grpc.health.v1.Health"} <= names
        reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="cserve.v1.Generation")]), timeout=10))
        assert reply.file_descriptor_response.file_descriptor_proto


def test_tls(chat_model_dir, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    proc = ServerProcess(chat_model_dir, "--max-model-len", "256", "--grpc-port", str(port), "--ssl-keyfile",
                         str(key), "--ssl-certfile", str(cert), log_dir=tmp_path, scheme="https")
    try:
        proc.wait_ready(verify=str(cert))
        with GenerationClient(f"localhost:{port}", root_certificates=cert.read_bytes(), timeout=30) as secure:
            out = secure.complete(text="Hi", max_tokens=3, ignore_eos=True)
            assert out.usage.completion_tokens == 3
        with GenerationClient(f"localhost:{port}", timeout=5) as plain:  # no TLS: the handshake fails
            with pytest.raises(grpc.RpcError) as e:
                plain.list_models()
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        proc.stop()


def test_colliding_request_ids_are_separate_requests(server):
    """Client ids are labels: two concurrent calls with one request_id are two requests."""
    import threading

    results = []

    def one() -> None:
        with GenerationClient(server.grpc_target, api_key=KEY, timeout=60) as c:
            results.append(c.complete(text="Hello", request_id="same", max_tokens=10, temperature=0,
                                      ignore_eos=True, n=2))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    for r in results:
        assert r.request_id == "same"
        assert sorted(r.finish_reasons) == [0, 1] and set(r.finish_reasons.values()) == {"length"}
        assert all(len(ids) == 10 for ids in r.token_ids.values())
    with server.client() as http:
        wait_idle(http)
