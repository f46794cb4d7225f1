"""API keys, CORS, request-id headers, root path, TLS and Unix sockets."""

from __future__ import annotations

import ssl
import subprocess
import time

import httpx
import pytest

from tests.helpers.server import ServerProcess


@pytest.fixture(scope="module")
def guarded(chat_model_dir, tmp_path_factory):
    proc = ServerProcess(chat_model_dir, "--api-key", "sk-test", "--allowed-origins", '["http://app.example"]',
                         "--allow-credentials", "--enable-request-id-headers", "--max-model-len", "256",
                         "--disable-fastapi-docs", log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    proc.stop()


def test_api_key(guarded):
    import openai

    body = {"model": guarded_model(guarded), "prompt": "Hi", "max_tokens": 1}
    with guarded.client() as http:
        r = http.post("/v1/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == 401
        assert http.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.post("/v1/completions", json=body, headers={"Authorization": "Bearer sk-test"}).status_code == 200
        assert http.get("/health").status_code == 200  # only /v1 routes need the key
    bad = openai.OpenAI(base_url=guarded.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=guarded.base_url + "/v1", api_key="sk-test", max_retries=0)
    assert good.models.list().data


def guarded_model(proc) -> str:
    with proc.client() as http:
        return http.get("/v1/models", headers={"Authorization": "Bearer sk-test"}).json()["data"][0]["id"]


def test_cors(guarded):
    with guarded.client() as http:
        pre = http.options("/v1/completions", headers={"Origin": "http://app.example",
                                                        "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "http://app.example"
        assert pre.headers["access-control-allow-credentials"] == "true"
        other = http.options("/v1/completions", headers={"Origin": "http://evil.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers


def test_request_id_header_and_disabled_docs(guarded):
    with guarded.client() as http:
        r = http.get("/health", headers={"X-Request-Id": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        assert http.get("/health").headers["x-request-id"]
        assert http.get("/docs").status_code == 404


def _self_signed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key, cert


def test_tls_with_env_api_key_and_certificate_refresh(chat_model_dir, tmp_path):
    import openai

    key, cert = _self_signed(tmp_path)
    proc = ServerProcess(chat_model_dir, "--ssl-keyfile", str(key), "--ssl-certfile", str(cert),
                         "--enable-ssl-refresh", "--max-model-len", "256", env={"VLLM_API_KEY": "env-key"},
                         log_dir=tmp_path, scheme="https")
    try:
        proc.wait_ready(verify=str(cert))
        client = openai.OpenAI(base_url=proc.base_url + "/v1", api_key="env-key", max_retries=0,
                               http_client=httpx.Client(verify=ssl.create_default_context(cafile=str(cert))))
        out = client.completions.create(model=client.models.list().data[0].id, prompt="Hi", max_tokens=2)
        assert out.usage.completion_tokens >= 1
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate
            httpx.get(proc.base_url + "/health", verify=True)
        # --enable-ssl-refresh: a new certificate in place is served without a restart.
        old_pem = cert.read_text()
        new_dir = tmp_path / "new"
        new_dir.mkdir()
        new_key, new_cert = _self_signed(new_dir)
        key.write_bytes(new_key.read_bytes())
        cert.write_bytes(new_cert.read_bytes())
        assert cert.read_text() != old_pem
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(proc.base_url + "/health", verify=ssl.create_default_context(cafile=str(new_cert)))
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert "Reloaded the SSL certificates" in proc.log()
    finally:
        proc.stop()


def test_unix_socket(chat_model_dir, tmp_path):
    import openai

    sock = str(tmp_path / "cserve.sock")
    proc = ServerProcess(chat_model_dir, "--max-model-len", "256", "--served-model-name", "uds-model",
                         uds=sock, log_dir=tmp_path)
    try:
        proc.wait_ready()
        client = openai.OpenAI(base_url="http://localhost/v1", api_key="x", max_retries=0,
                               http_client=httpx.Client(transport=httpx.HTTPTransport(uds=sock)))
        out = client.chat.completions.create(model="uds-model", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=2)
        assert out.choices[0].message.role == "assistant"
    finally:
        proc.stop()


def test_root_path(chat_model_dir, tmp_path):
    proc = ServerProcess(chat_model_dir, "--max-model-len", "256", "--root-path", "/api", log_dir=tmp_path)
    try:
        proc.wait_ready()
        with proc.client() as http:
            spec = http.get("/openapi.json").json()
            assert spec["servers"] == [{"url": "/api"}]
            assert http.get("/api/v1/models").status_code == 200
    finally:
        proc.stop()
