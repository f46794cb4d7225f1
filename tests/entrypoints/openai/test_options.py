"""Server flags that change behaviour: chat template, its kwargs and content format, response
role, generation config, token-id logprobs, forced usage, request/output logging, access-log
filtering, the load progress bar and --config YAML."""

from __future__ import annotations

import json
import time

import pytest

from tests.helpers.server import ServerProcess

# Needs the "openai" content format (parts) and a kwarg from --default-chat-template-kwargs.
TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'][0]['text'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}[bot]{{ greeting }}{% endif %}")
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def options_server(chat_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("options")
    (tmp / "template.jinja").write_text(TEMPLATE)
    (tmp / "serve.yaml").write_text("served-model-name: from-yaml\nmax_model_len: 512\n")
    proc = ServerProcess(
        chat_model_dir, "--config", str(tmp / "serve.yaml"), "--chat-template", str(tmp / "template.jinja"),
        "--chat-template-content-format", "openai", "--default-chat-template-kwargs", '{"greeting": "hey"}',
        "--response-role", "bot", "--trust-request-chat-template", "--generation-config", "vllm",
        "--override-generation-config", '{"max_new_tokens": 5}', "--return-tokens-as-token-ids",
        "--enable-force-include-usage", "--enable-log-requests", "--enable-log-outputs", "--max-log-len", "12",
        "--disable-access-log-for-endpoints", "/health,/metrics", "--h11-max-incomplete-event-size", "16384",
        log_dir=tmp)
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def client(options_server):
    import openai

    return openai.OpenAI(base_url=options_server.base_url + "/v1", api_key="x", max_retries=0)


def rendered(http, **body) -> str:
    ids = http.post("/tokenize", json={"messages": MESSAGES, **body}).json()["tokens"]
    return http.post("/detokenize", json={"tokens": ids}).json()["prompt"]


def test_config_file_and_template(options_server, client):
    assert [m.id for m in client.models.list().data] == ["from-yaml"]
    assert client.models.list().data[0].model_extra["max_model_len"] == 512
    with options_server.client() as http:
        assert rendered(http) == "[user]Hello there\n[bot]hey"
        assert rendered(http, chat_template_kwargs={"greeting": "yo"}) == "[user]Hello there\n[bot]yo"
        # --trust-request-chat-template lets a request bring its own.
        r = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1,
                                                    "chat_template": "{{ messages[0]['content'][0]['text'] }}!"})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == len(
            http.post("/tokenize", json={"prompt": "Hello there!", "add_special_tokens": False}).json()["tokens"])


def test_response_role_and_generation_defaults(client):
    out = client.chat.completions.create(model="from-yaml", messages=MESSAGES, extra_body={"ignore_eos": True})
    assert out.choices[0].message.role == "bot"
    assert out.usage.completion_tokens == 5  # max_new_tokens from --override-generation-config
    # --generation-config vllm: the model's temperature 0.7 is not a default; vLLM's 1.0 is.
    kw = dict(model="from-yaml", prompt="The quick", max_tokens=12, seed=11, extra_body={"ignore_eos": True})
    assert client.completions.create(**kw).choices[0].text == \
        client.completions.create(temperature=1.0, **kw).choices[0].text


def test_tokens_as_ids_and_forced_usage(client):
    out = client.completions.create(model="from-yaml", prompt="The quick", max_tokens=4, logprobs=1)
    assert all(t.startswith("token_id:") for t in out.choices[0].logprobs.tokens)
    chunks = list(client.completions.create(model="from-yaml", prompt="The quick", max_tokens=4, stream=True))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_request_and_output_logging(options_server, client):
    client.completions.create(model="from-yaml", prompt="A fairly long prompt to truncate", max_tokens=3)
    with options_server.client() as http:
        http.get("/health")
        http.post("/tokenize", json={"prompt": "x"})
    time.sleep(0.2)
    log = options_server.log()
    assert "Received request cmpl-" in log and "'A fairly lon'" in log and "A fairly long" not in log
    assert "Generated response cmpl-" in log
    assert "Loading weights" in log  # --use-tqdm-on-load is on by default
    assert '"GET /health' not in log and '"POST /tokenize' in log


def test_unknown_fields_are_ignored_with_a_warning(options_server):
    with options_server.client() as http:
        r = http.post("/v1/completions", content=json.dumps({"prompt": "Hi", "max_tokens": 1, "frobnicate": 1}),
                      headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert "frobnicate" in options_server.log()


def test_h11_incomplete_event_limit(options_server):
    with options_server.client() as http:
        assert http.get("/health", headers={"x-big": "a" * 4000}).status_code == 200
        assert http.get("/health", headers={"x-big": "a" * 200000}).status_code >= 400
        assert http.get("/health").status_code == 200


def test_request_template_is_text_not_a_server_file(options_server):
    """Even trusted, a request's chat_template is the template itself: naming a file on the
    server reads nothing from it."""
    secret = options_server.log_path  # a file the server can read
    with options_server.client() as http:
        r = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1,
                                                    "chat_template": str(secret)})
        assert r.status_code == 200, r.text
        want = http.post("/tokenize", json={"prompt": str(secret), "add_special_tokens": False}).json()["count"]
        assert r.json()["usage"]["prompt_tokens"] == want
