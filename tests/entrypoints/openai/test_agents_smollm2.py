"""Agents end to end on the real SmolLM2-135M-Instruct with the official openai client:
structured outputs (json_schema, regex, choice, grammar, the legacy guided_* fields), tool_choice
required and named, an auto tool call through the hermes parser (the model's text forced with a
regex so it is deterministic), and a tool result message in the history. Streamed and not."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers.server import ServerProcess

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
SHOPPING = {"type": "object", "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3,
                                                       "items": {"type": "string", "maxLength": 16}}},
            "required": ["items"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": {"type": "object", "required": ["a", "b"],
                                                     "additionalProperties": False,
                                                     "properties": {"a": {"type": "integer"},
                                                                    "b": {"type": "integer"}}}}},
]
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]


@pytest.fixture(scope="module")
def server(smollm2_model_dir, tmp_path_factory):
    proc = ServerProcess(str(smollm2_model_dir), "--served-model-name", "smol", "--max-model-len", "2048",
                         "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                         log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready(timeout=120)
    yield proc
    proc.stop()


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)


def _chat(client, stream: bool, **kw):
    """(texts per choice, finish reasons, tool calls per choice) of a chat, streamed or not."""
    kw = dict(model="smol", temperature=0.8, seed=11, max_tokens=120) | kw
    if not stream:
        out = client.chat.completions.create(**kw)
        calls = [[(t.function.name, t.function.arguments) for t in (c.message.tool_calls or [])] for c in out.choices]
        return [c.message.content for c in out.choices], [c.finish_reason for c in out.choices], calls
    n = kw.get("n", 1)
    texts, reasons = [""] * n, [None] * n
    calls: list[dict] = [{} for _ in range(n)]
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
            for t in c.delta.tool_calls or []:
                slot = calls[c.index].setdefault(t.index, ["", ""])
                slot[0] += (t.function.name or "") if t.function else ""
                slot[1] += (t.function.arguments or "") if t.function else ""
    return ([t or None for t in texts], reasons,
            [[tuple(v) for _, v in sorted(c.items())] for c in calls])


@pytest.mark.parametrize("schema", [PERSON, SHOPPING, WEATHER], ids=["person", "shopping", "weather"])
def test_json_schema_outputs_validate(client, schema):
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    msgs = [{"role": "user", "content": "Answer in JSON."}]
    full = _chat(client, False, messages=msgs, response_format=fmt, n=2, logprobs=True, top_logprobs=2)
    streamed = _chat(client, True, messages=msgs, response_format=fmt, n=2)
    assert streamed[:2] == full[:2]
    for text, reason in zip(*full[:2]):
        assert reason == "stop"
        jsonschema.validate(json.loads(text), schema)


def test_json_object_and_compact_whitespace(client):
    text = _chat(client, False, messages=ASK, response_format={"type": "json_object"},
                 extra_body={"structured_outputs": {"disable_any_whitespace": True}})[0][0]
    assert isinstance(json.loads(text), dict)
    compact = _chat(client, False, messages=ASK, extra_body={"structured_outputs": {"json": PERSON,
                                                                                      "disable_any_whitespace": True}})
    # No free whitespace: xgrammar's fixed separators, as with vLLM's disable_any_whitespace.
    assert json.dumps(json.loads(compact[0][0]), ensure_ascii=False) == compact[0][0]


@pytest.mark.parametrize("body,check", [
    ({"structured_outputs": {"regex": r"[A-Z]{2}-\d{3}"}}, lambda t: re.fullmatch(r"[A-Z]{2}-\d{3}", t)),
    ({"guided_regex": r"(yes|no), because [a-z ]{5,20}\."}, lambda t: re.fullmatch(r"(yes|no), because [a-z ]{5,20}\.", t)),
    ({"structured_outputs": {"choice": ["Paris", "London", "Rome"]}}, lambda t: t in ("Paris", "London", "Rome")),
    ({"guided_choice": ["positive", "negative"]}, lambda t: t in ("positive", "negative")),
    ({"structured_outputs": {"grammar": 'root ::= "SELECT " col " FROM " tbl\ncol ::= "name" | "age"\n'
                                        'tbl ::= "users" | "pets"'}},
     lambda t: re.fullmatch(r"SELECT (name|age) FROM (users|pets)", t)),
    ({"guided_json": json.dumps(PERSON)}, lambda t: json.loads(t)["age"] >= 0),
    ({"guided_json": PERSON, "guided_decoding_backend": "guidance"}, lambda t: json.loads(t)["age"] >= 0),
    ({"guided_regex": r"[a-z]{1,8}@[a-z]{1,8}\.com", "guided_decoding_backend": "guidance"},
     lambda t: re.fullmatch(r"[a-z]{1,8}@[a-z]{1,8}\.com", t)),
], ids=["regex", "guided_regex", "choice", "guided_choice", "grammar", "guided_json", "guidance_json",
        "guidance_regex"])
def test_regex_choice_grammar_and_legacy_fields(client, body, check):
    texts, reasons, _ = _chat(client, False, messages=ASK, extra_body=body, n=2)
    streamed = _chat(client, True, messages=ASK, extra_body=body, n=2)
    assert streamed[:2] == (texts, reasons)
    for t, r in zip(texts, reasons):
        assert r == "stop" and check(t), t


def test_completions_with_structured_outputs(client):
    out = client.completions.create(model="smol", prompt="The capital of Italy is", max_tokens=30, temperature=0,
                                    extra_body={"structured_outputs": {"choice": [" Rome", " Milan"]}}, logprobs=1)
    assert out.choices[0].text in (" Rome", " Milan") and out.choices[0].finish_reason == "stop"
    out = client.completions.create(model="smol", prompt=["Name:", "Age:"], max_tokens=60, temperature=0.5, seed=3,
                                    extra_body={"guided_json": PERSON})
    assert len(out.choices) == 2 and all(json.loads(c.text)["name"] is not None for c in out.choices)


def test_max_tokens_mid_grammar_is_length(client):
    texts, reasons, _ = _chat(client, False, messages=ASK, max_tokens=4, extra_body={"guided_json": SHOPPING})
    assert reasons == ["length"]


@pytest.mark.parametrize("body,fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "schema"),
    ({"structured_outputs": {"regex": "a(b"}}, "regex"),
    ({"structured_outputs": {"grammar": "root ::= missing"}}, "missing"),
    ({"guided_json": "{not json"}, "json"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "only use one kind"),
    ({"guided_decoding_backend": "outlines", "guided_regex": "a"}, "outlines"),
])
def test_bad_constraints_are_400(server, body, fragment):
    with server.client() as http:
        r = http.post("/v1/chat/completions", json={"model": "smol", "messages": ASK, **body})
    assert r.status_code == 400, r.text
    assert fragment.lower() in r.json()["error"]["message"].lower()


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_tool_choice_required_and_named(client, stream):
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    texts, reasons, calls = _chat(client, stream, messages=ASK, tools=TOOLS, tool_choice="required")
    assert calls[0] and reasons == ["tool_calls"]
    for name, args in calls[0]:
        jsonschema.validate(json.loads(args), schemas[name])
    named = {"type": "function", "function": {"name": "get_weather"}}
    texts, reasons, calls = _chat(client, stream, messages=ASK, tools=TOOLS, tool_choice=named)
    assert [c[0] for c in calls[0]] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0][0][1]), WEATHER)


def test_streamed_tool_calls_equal_full(client):
    for choice in ("required", {"type": "function", "function": {"name": "add"}}):
        kw = dict(messages=ASK, tools=TOOLS, tool_choice=choice, n=2)
        assert _chat(client, True, **kw) == _chat(client, False, **kw)


@pytest.mark.parametrize("stream", [False, True], ids=["full", "stream"])
def test_auto_tool_call_through_hermes(client, stream):
    """The regex forces the hermes call format; the parser turns it into a tool call."""
    forced = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris", "unit": "celsius"\}\}\n</tool_call>'
    texts, reasons, calls = _chat(client, stream, messages=ASK, tools=TOOLS, tool_choice="auto",
                                  extra_body={"structured_outputs": {"regex": forced}})
    assert reasons == ["tool_calls"] and not texts[0]
    assert [(n, json.loads(a)) for n, a in calls[0]] == [("get_weather", {"city": "Paris", "unit": "celsius"})]


def test_tool_result_round_trip(client):
    """The assistant's tool call and the tool's result go back in the history; the reply comes."""
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"temperature": 21})}]
    out = client.chat.completions.create(model="smol", messages=messages, tools=TOOLS, temperature=0, max_tokens=20)
    assert out.choices[0].message.content and out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 20 and 0 < out.usage.completion_tokens <= 20
