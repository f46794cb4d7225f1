"""`cserve serve --backend sglang` as a process: refused flags stop startup with one line and exit
status 2; a broad SGLang command line starts the server, which answers the OpenAI endpoints."""

from __future__ import annotations

import pytest

from tests.cli.test_serve_command import run_cli
from tests.helpers.server import ServerProcess


@pytest.mark.parametrize("flags, line", [
    (["--schedule-policy", "random"], "--schedule-policy random is not supported yet"),
    (["--page-size", "4"], "--page-size 4 is not supported yet"),
    (["--enable-dp-attention"], "--enable-dp-attention is not supported yet"),
    (["--chat-template", "chatml"], "--chat-template chatml: no such file"),
    (["--mem-fraction-static", "2"], "--mem-fraction-static must be in (0, 1], got 2.0"),
])
def test_refused_flags_stop_startup(tmp_path, flags, line):
    r = run_cli("serve", "--model-path", str(tmp_path), *flags, "-be", "sglang")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and line in lines[0], r.stderr


def test_unknown_and_missing(tmp_path):
    r = run_cli("serve", "--backend", "sglang", "--model-path", str(tmp_path), "--max-model-len", "1")
    assert r.returncode == 2 and "unrecognized arguments: --max-model-len" in r.stderr
    r = run_cli("serve", "--backend", "sglang", "--port", "1")
    assert r.returncode == 2 and "--model-path/--model" in r.stderr


def test_help():
    r = run_cli("serve", "--backend", "sglang", "--help=DataParallelism")
    assert r.returncode == 0 and "--dp-size" in r.stdout and "--port" not in r.stdout


def test_serves_with_sglang_flags(chat_model_dir, tmp_path):
    proc = ServerProcess(None, "--backend", "sglang", "--model-path", chat_model_dir, "--context-length", "256",
                         "--mem-fraction-static", "0.5", "--max-running-requests", "8", "--chunked-prefill-size", "512",
                         "--page-size", "16", "--random-seed", "1", "--log-requests", "--disable-radix-cache",
                         "--served-model-name", "tiny", "--enable-metrics", "--schedule-policy", "lpm",
                         "--api-key", "sk-test", "--log-level", "info", "--reasoning-parser", "deepseek-r1",
                         "--tool-call-parser", "qwen25", log_dir=tmp_path)
    with proc:
        proc.wait_ready()
        with proc.client(timeout=60, headers={"Authorization": "Bearer sk-test"}) as http:
            models = http.get("/v1/models").json()
            assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0]["max_model_len"] == 256
            r = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hello world", "max_tokens": 5,
                                                   "temperature": 0})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["text"]
            r = http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                        "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200, r.text
            # deepseek-r1 with no </think>: all reasoning; tools go to the qwen25 (hermes) parser.
            message = r.json()["choices"][0]["message"]
            assert message["reasoning"] and not message["content"]
            r = http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3, "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
                "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200, r.text
            assert http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1},
                             headers={"Authorization": "Bearer wrong"}).status_code == 401
            # SGLang's native API on the same server, with the values the flags set.
            r = http.post("/generate", json={"text": "Hello world", "sampling_params": {"max_new_tokens": 5,
                                                                                          "temperature": 0}})
            assert r.status_code == 200, r.text
            assert r.json()["meta_info"]["completion_tokens"] == 5 and r.json()["text"] == body["choices"][0]["text"]
            info = http.get("/server_info").json()
            assert (info["context_length"], info["max_running_requests"], info["page_size"]) == (256, 8, 16)
            assert info["api_key"] == "***" and info["random_seed"] == 1
    log = proc.log()
    assert "--enable-metrics: no effect" in log and "--schedule-policy lpm: served as fcfs" in log
    assert "Received request" in log  # --log-requests
    assert "blocks of 16 tokens" in log and "for 256 tokens per request" in log  # --page-size, --context-length
