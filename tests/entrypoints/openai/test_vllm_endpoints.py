"""vLLM 0.15's routes beside the generation ones: /invocations, /tokenize and /detokenize with
vLLM's options, /v1/models' fields, /load, the development routes (VLLM_SERVER_DEV_MODE=1), the
refused ones, and docs/serve.md's "Endpoints" table checked against the served routes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.helpers.server import ServerProcess, metric, running_server

MODEL = "tiny-dev"
DOCS = Path(__file__).resolve().parents[3] / "docs" / "serve.md"
# A template that shows the tools it is given, to see that /tokenize passes them.
TOOLS_TEMPLATE = ("{% for t in tools %}{{ t['function']['name'] }};{% endfor %}"
                  "{% for m in messages %}{{ m['content'] }}{% endfor %}")


@pytest.fixture(scope="module")
def dev(chat_model_dir, tmp_path_factory):
    """A server with every optional route: dev mode, tokenizer info (and no load tracking, which
    the module-scoped `server` of conftest.py has)."""
    with running_server(chat_model_dir, "--served-model-name", MODEL, "--max-model-len", "256",
                        "--enable-tokenizer-info-endpoint", "--trust-request-chat-template", "--seed", "0",
                        env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_TEST_SECRET_KEY": "hidden"},
                        log_dir=tmp_path_factory.mktemp("logs")) as proc:
        yield proc


@pytest.fixture
def h(dev):
    with dev.client(timeout=60) as c:
        yield c


def _table(section: str) -> list[list[str]]:
    text = DOCS.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in body.splitlines()
            if line.startswith("| `")]


def endpoint_rows() -> list[tuple[str, list[str], str]]:
    return [(path.strip("`"), [m.strip() for m in methods.split(",")], status)
            for path, methods, status, _ in _table("Endpoints")]


# --- /invocations ------------------------------------------------------------------------------

def test_invocations_dispatches_by_body_shape(h):
    chat = h.post("/invocations", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    assert chat.json()["id"].startswith("chatcmpl-")
    cmpl = h.post("/invocations", json={"prompt": "Hello", "max_tokens": 3, "temperature": 0})
    assert cmpl.status_code == 200 and cmpl.json()["object"] == "text_completion"
    direct = h.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "temperature": 0}).json()
    assert cmpl.json()["choices"][0]["text"] == direct["choices"][0]["text"]
    with h.stream("POST", "/invocations", json={"prompt": "Hello", "max_tokens": 2, "stream": True}) as r:
        assert r.status_code == 200 and "data: [DONE]" in r.read().decode()
    bad = h.post("/invocations", json={"input": "embed me"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == ("Cannot find suitable handler for request. Expected one of: "
                                              "['ChatCompletionRequest', 'CompletionRequest']")
    assert h.post("/invocations", content=b"{not json").status_code == 400
    # A chat body passes the chat endpoint's own checks.
    assert h.post("/invocations", json={"messages": [{"role": "user", "content": "x"}], "model": "nope"}
                  ).status_code == 404


# --- /tokenize, /detokenize --------------------------------------------------------------------

def test_tokenize_prompt_options(h):
    r = h.post("/tokenize", json={"prompt": "Hello world!"}).json()
    assert set(r) == {"count", "max_model_len", "tokens", "token_strs"}
    assert r["token_strs"] is None and r["max_model_len"] == 256 and r["count"] == len(r["tokens"])
    s = h.post("/tokenize", json={"prompt": "Hello world!", "return_token_strs": True,
                                  "add_special_tokens": False}).json()
    assert s["tokens"] == r["tokens"] and len(s["token_strs"]) == s["count"] and "Ġworld" in "".join(s["token_strs"])
    assert h.post("/detokenize", json={"tokens": r["tokens"], "model": MODEL}).json() == {"prompt": "Hello world!"}
    assert h.post("/detokenize", json={"tokens": [-1]}).status_code == 400


def test_tokenize_chat_options(h):
    msgs = [{"role": "user", "content": "Hi"}]
    plain = h.post("/tokenize", json={"messages": msgs}).json()
    with_prompt = h.post("/detokenize", json={"tokens": plain["tokens"]}).json()["prompt"]
    assert with_prompt.endswith("<|im_start|>assistant\n")
    no_prompt = h.post("/tokenize", json={"messages": msgs, "add_generation_prompt": False}).json()
    assert no_prompt["count"] < plain["count"]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    r = h.post("/tokenize", json={"messages": msgs, "tools": tools, "chat_template": TOOLS_TEMPLATE}).json()
    assert h.post("/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == "get_weather;Hi"
    both = h.post("/tokenize", json={"messages": msgs, "add_generation_prompt": True, "continue_final_message": True})
    assert both.status_code == 400 and "continue_final_message" in both.json()["error"]["message"]
    for field in ("media_io_kwargs", "mm_processor_kwargs"):
        refused = h.post("/tokenize", json={"messages": msgs, field: {"image": {}}})
        assert refused.status_code == 400 and field in refused.json()["error"]["message"]
    assert h.post("/tokenize", json={}).status_code == 400
    assert h.post("/tokenize", json={"prompt": "x", "model": "nope"}).status_code == 404


# --- /v1/models, /load, /health, /ping, /version ----------------------------------------------

def test_models_have_vllm_fields(h, chat_model_dir):
    data = h.get("/v1/models").json()
    assert data["object"] == "list"
    card = data["data"][0]
    assert card["id"] == MODEL and card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == str(chat_model_dir) and card["parent"] is None and card["max_model_len"] == 256
    assert abs(card["created"] - time.time()) < 600
    (perm,) = card["permission"]
    assert perm["object"] == "model_permission" and perm["id"].startswith("modelperm-")
    assert (perm["allow_sampling"], perm["allow_logprobs"], perm["allow_view"]) == (True, True, True)
    assert (perm["allow_create_engine"], perm["allow_fine_tuning"], perm["is_blocking"]) == (False, False, False)
    assert perm["organization"] == "*" and perm["group"] is None
    assert h.get(f"/v1/models/{MODEL}").json()["owned_by"] == "vllm"


def _load_while_streaming(proc: ServerProcess) -> int:
    """The largest /load seen while 8 requests of 4 x 200 tokens run."""
    import asyncio

    import httpx

    async def run() -> int:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=60) as c:
            body = {"prompt": "Hello", "max_tokens": 200, "ignore_eos": True, "n": 4}
            tasks = [asyncio.ensure_future(c.post("/v1/completions", json=body)) for _ in range(8)]
            seen = 0
            while not all(t.done() for t in tasks):
                seen = max(seen, (await c.get("/load")).json()["server_load"])
            assert all(t.result().status_code == 200 for t in tasks)
            return seen

    return asyncio.run(run())


def test_load_counts_requests_in_flight(server):
    # --enable-server-load-tracking (conftest's server): requests in flight.
    assert _load_while_streaming(server) >= 1


def test_load_is_zero_without_tracking(h, dev):
    # As vLLM, /load is served without the flag too, and answers 0.
    assert _load_while_streaming(dev) == 0 and h.get("/load").json() == {"server_load": 0}
    assert h.get("/health").status_code == 200 and h.post("/ping").status_code == 200


# --- development routes ------------------------------------------------------------------------

def test_server_info_in_dev_mode(h):
    text = h.get("/server_info").json()
    assert set(text) == {"vllm_config", "vllm_env", "system_env"}
    assert isinstance(text["vllm_config"], str) and "max_model_len=256" in text["vllm_config"]
    assert text["vllm_env"].get("VLLM_SERVER_DEV_MODE") == "1" and "VLLM_TEST_SECRET_KEY" not in text["vllm_env"]
    assert text["system_env"]["python_version"]
    js = h.get("/server_info", params={"config_format": "json"}).json()
    assert js["vllm_config"]["max_model_len"] == 256 and js["vllm_config"]["served_model_name"] == [MODEL]
    assert h.get("/server_info", params={"config_format": "yaml"}).status_code == 400


def test_reset_prefix_cache_in_dev_mode(h):
    prompt = "The quick brown fox jumps over the lazy dog. " * 6

    def hits_after_request() -> float:
        before = metric(h, "vllm:prefix_cache_hits_total")
        h.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
        return metric(h, "vllm:prefix_cache_hits_total") - before

    hits_after_request()
    assert hits_after_request() > 0  # the prompt's blocks are cached
    assert h.post("/reset_prefix_cache").status_code == 200
    assert hits_after_request() == 0  # gone
    refused = h.post("/reset_prefix_cache", params={"reset_running_requests": "true"})
    assert refused.status_code == 400 and "reset_running_requests" in refused.json()["error"]["message"]
    assert h.post("/reset_mm_cache").status_code == 200 and h.post("/reset_encoder_cache").status_code == 200


def test_dev_routes_need_dev_mode(server):
    with server.client(timeout=10) as c:
        for path in ("/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache"):
            assert c.post(path).status_code == 404
        assert "vllm_config" not in c.get("/server_info").json()  # SGLang's /server_info


def test_sleep_mode_and_profiler_flags_are_refused():
    from cserve.cli.args import UnsupportedFlagError, parse_serve_args

    for argv in (["--enable-sleep-mode"], ["--profiler-config", '{"profiler": "torch"}']):
        with pytest.raises(UnsupportedFlagError, match=argv[0]):
            parse_serve_args(["m", *argv])


# --- the table in docs/serve.md ----------------------------------------------------------------

def test_endpoints_table_matches_the_served_routes(h):
    rows = endpoint_rows()
    assert {status for _, _, status in rows} <= {"honoured", "refused", "not applicable", "planned elsewhere"}
    documented = {(path, m) for path, methods, status in rows if status == "honoured" for m in methods}
    served = {(path, m.upper()) for path, item in h.get("/openapi.json").json()["paths"].items() for m in item}
    # Every route the server serves (its OpenAPI document lists them all) is in the table as honoured.
    assert served - documented == set(), "served but not in docs/serve.md's Endpoints table as honoured"
    for path, method in documented - served:  # the docs pages, which the schema leaves out
        assert h.request(method, path).status_code != 404, (method, path)
    for path, methods, status in rows:
        if status == "honoured":
            continue
        url = re.sub(r"\{[^}]+\}", "x", path)
        for method in methods:
            r = h.request(method, url, json={})
            assert r.status_code == 404, (method, path, r.status_code)
            assert "error" in r.json()


# --- README's newcomer path --------------------------------------------------------------------

def test_readme_first_command_serves_the_default_model_and_its_curl_works(h):
    readme = (DOCS.parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert blocks[0].strip() == "pip install . && cserve serve"  # no torch, no transformers, no model to name
    curl = blocks[1]
    assert curl.startswith("curl localhost:8000/v1/chat/completions")
    body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
    answer = h.post("/v1/chat/completions", json=body)  # the same body against this server's model
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert "<!-- test-command: .ci/run runs the line below -->" in readme
