"""Structured outputs from the request side, without a server: response_format, vLLM's
structured_outputs object and the legacy guided_* fields become one StructuredOutputsParams (or a
400 naming the field); tool_choice "required" / named become the tools' JSON schema, and their
outputs parse into tool calls, streamed exactly as not streamed."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import jsonschema_rs
import pytest
from pydantic import ValidationError

from cserve.entrypoints.openai.chat_parsing import ChatParsing, ChoiceParsers, merge_tool_calls
from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from cserve.entrypoints.openai.serving import check_common, sampling_params
from cserve.entrypoints.openai.structured_outputs import structured_outputs_from_request
from cserve.entrypoints.openai.tool_choice import (NamedToolCallParser, RequiredToolCallsParser, check_tool_choice,
                                                   tool_choice_schema)
from cserve.parsers.reasoning import get_reasoning_parser

MESSAGES = [{"role": "user", "content": "Hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "get_time",
                                         "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                                                        "required": ["tz"], "additionalProperties": False}}}
NOARGS = {"type": "function", "function": {"name": "ping"}}
TOOLS = [WEATHER, TIME, NOARGS]
LEGACY_TAG = {"type": "structural_tag", "triggers": ["<function="],
              "structures": [{"begin": "<function=get_weather>", "schema": SCHEMA, "end": "</function>"},
                             {"begin": "<function=ping>", "schema": json.dumps({"type": "object"}),
                              "end": "</function>"}]}
# xgrammar's StructuralTag.from_legacy_structural_tag(tags, triggers) of LEGACY_TAG, without the
# fields left at their defaults.
LEGACY_TAG_CONVERTED = {"type": "structural_tag", "format": {
    "type": "triggered_tags", "triggers": ["<function="],
    "tags": [{"type": "tag", "begin": "<function=get_weather>",
              "content": {"type": "json_schema", "json_schema": SCHEMA}, "end": "</function>"},
             {"type": "tag", "begin": "<function=ping>",
              "content": {"type": "json_schema", "json_schema": {"type": "object"}}, "end": "</function>"}]}}
NEW_TAG = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": ["<tool>"], "tags": [
    {"type": "tag", "begin": "<tool>", "content": {"type": "json_schema", "json_schema": SCHEMA}, "end": "</tool>"}]}}
MULTIPLE = "You can only use one kind of structured outputs constraint but multiple are specified"


def completion(**fields) -> CompletionRequest:
    return CompletionRequest(prompt="Hi", **fields)


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=MESSAGES, **fields)


BUILDERS = pytest.mark.parametrize("build", [completion, chat], ids=["completion", "chat"])


def params_of(build, **fields):
    return structured_outputs_from_request(build(**fields))


def refused(build, **fields) -> APIError:
    with pytest.raises(APIError) as e:
        structured_outputs_from_request(build(**fields))
    assert e.value.status == 400
    return e.value


def constraint(so) -> tuple:
    """(kind, value), a structural tag's JSON text decoded."""
    value = getattr(so, so.kind())
    return so.kind(), json.loads(value) if so.kind() == "structural_tag" else value


# -- response_format --------------------------------------------------------------------------


@BUILDERS
def test_response_format_text_and_none_are_no_constraint(build):
    assert params_of(build) is None
    assert params_of(build, response_format={"type": "text"}) is None


@BUILDERS
@pytest.mark.parametrize("fmt, expected", [
    ({"type": "json_object"}, ("json_object", True)),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA, "strict": True}}, ("json", SCHEMA)),
    ({"type": "json_schema", "json_schema": {"name": "w", "description": "d", "schema": json.dumps(SCHEMA)}},
     ("json", SCHEMA)),
    ({"type": "json_schema", "json_schema": {"name": "any"}}, ("json_object", True)),  # no schema: any object
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": True}}, ("json", True)),
    (LEGACY_TAG, ("structural_tag", LEGACY_TAG_CONVERTED)),
    (NEW_TAG, ("structural_tag", NEW_TAG)),
])
def test_response_format_types(build, fmt, expected):
    assert constraint(params_of(build, response_format=fmt)) == expected


@BUILDERS
@pytest.mark.parametrize("fmt, param", [
    ({"type": "xml"}, "response_format.type"),
    ({}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": "x"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "w", "strict": "yes", "schema": SCHEMA}},
     "response_format.json_schema.strict"),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": [1]}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": "{not json"}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": False}}, "response_format.json_schema.schema"),
    ({"type": "structural_tag"}, "response_format"),
    ({"type": "structural_tag", "format": "x"}, "response_format"),
    ({"type": "structural_tag", "structures": [], "triggers": "<f"}, "response_format"),
    ({"type": "structural_tag", "structures": [{"begin": "<f>", "end": "</f>"}], "triggers": ["<f"]},
     "response_format"),
    ({"type": "structural_tag", "structures": [{"begin": 1, "schema": {}, "end": "</f>"}], "triggers": ["<f"]},
     "response_format"),
])
def test_bad_response_formats_are_400s_naming_the_field(build, fmt, param):
    e = refused(build, response_format=fmt)
    assert e.param == param
    assert param.split(".")[0] in e.message


def test_unknown_response_format_type_is_named():
    e = refused(chat, response_format={"type": "grammar"})
    assert "'grammar'" in e.message and "json_schema" in e.message


# -- structured_outputs -----------------------------------------------------------------------


@BUILDERS
@pytest.mark.parametrize("so, expected", [
    ({"json": SCHEMA}, ("json", SCHEMA)),
    ({"json": json.dumps(SCHEMA)}, ("json", SCHEMA)),
    ({"regex": r"\d+"}, ("regex", r"\d+")),
    ({"choice": ["yes", "no"]}, ("choice", ["yes", "no"])),
    ({"grammar": 'root ::= "a" | "b"'}, ("grammar", 'root ::= "a" | "b"')),
    ({"json_object": True}, ("json_object", True)),
    ({"structural_tag": json.dumps(LEGACY_TAG)}, ("structural_tag", LEGACY_TAG_CONVERTED)),
    ({"structural_tag": {k: v for k, v in LEGACY_TAG.items() if k != "type"}},
     ("structural_tag", LEGACY_TAG_CONVERTED)),
    ({"structural_tag": json.dumps(NEW_TAG)}, ("structural_tag", NEW_TAG)),
    ({"structural_tag": {"format": NEW_TAG["format"]}}, ("structural_tag", NEW_TAG)),
])
def test_structured_outputs_object(build, so, expected):
    assert constraint(params_of(build, structured_outputs=so)) == expected


@BUILDERS
def test_structured_outputs_options_go_with_the_constraint(build):
    so = params_of(build, structured_outputs={"regex": "a+", "disable_fallback": True, "disable_any_whitespace": True,
                                              "disable_additional_properties": True, "whitespace_pattern": "[ ]?"})
    assert (so.regex, so.disable_fallback, so.disable_any_whitespace, so.disable_additional_properties,
            so.whitespace_pattern) == ("a+", True, True, True, "[ ]?")
    # With response_format as the constraint, as vLLM's replace() keeps the object's options.
    so = params_of(build, response_format={"type": "json_object"},
                   structured_outputs={"json_object": False, "disable_any_whitespace": True})
    assert so.json_object and so.disable_any_whitespace


@BUILDERS
@pytest.mark.parametrize("so, param, needle", [
    ({}, "structured_outputs", "none are specified"),
    ({"disable_any_whitespace": True}, "structured_outputs", "none are specified"),
    ({"choice": []}, "structured_outputs.choice", "empty list"),
    ({"choice": ["a", 1]}, "structured_outputs.choice", "list of strings"),
    ({"choice": "a"}, "structured_outputs.choice", "list of strings"),
    ({"regex": ""}, "structured_outputs.regex", "empty"),
    ({"regex": 5}, "structured_outputs.regex", "string"),
    ({"grammar": "  \n"}, "structured_outputs.grammar", "structured_outputs.grammar cannot be an empty string"),
    ({"json": "{oops"}, "structured_outputs.json", "Invalid JSON grammar specification"),
    ({"json": "[1, 2]"}, "structured_outputs.json", "JSON schema"),
    ({"json": 3}, "structured_outputs.json", "JSON schema"),
    ({"json": False}, "structured_outputs.json", "matches no output"),
    ({"json_object": "yes"}, "structured_outputs.json_object", "boolean"),
    ({"structural_tag": "nope"}, "structured_outputs.structural_tag", "Invalid JSON"),
    ({"structural_tag": "[]"}, "structured_outputs.structural_tag", "structural tag"),
    ({"structural_tag": {"type": "other", "format": {"type": "any_text"}}}, "structured_outputs.structural_tag",
     "type"),
    ({"regex": "a", "disable_fallback": "no"}, "structured_outputs.disable_fallback", "boolean"),
    ({"regex": "a", "whitespace_pattern": 1}, "structured_outputs.whitespace_pattern", "string"),
])
def test_bad_structured_outputs_are_400s_naming_the_field(build, so, param, needle):
    e = refused(build, structured_outputs=so)
    assert e.param == param and needle in e.message, e.message


# -- the legacy guided_* fields ---------------------------------------------------------------


@BUILDERS
@pytest.mark.parametrize("fields, expected", [
    ({"guided_json": SCHEMA}, ("json", SCHEMA)),
    ({"guided_json": json.dumps(SCHEMA)}, ("json", SCHEMA)),
    ({"guided_regex": "[a-z]+"}, ("regex", "[a-z]+")),
    ({"guided_choice": ["red", "green"]}, ("choice", ["red", "green"])),
    ({"guided_grammar": 'root ::= "x"'}, ("grammar", 'root ::= "x"')),
    ({"structural_tag": json.dumps(LEGACY_TAG)}, ("structural_tag", LEGACY_TAG_CONVERTED)),
])
def test_guided_fields_are_honoured(build, fields, expected):
    assert constraint(params_of(build, **fields)) == expected


@BUILDERS
def test_guided_options_and_backend(build):
    so = params_of(build, guided_json=SCHEMA, guided_whitespace_pattern=r"[\n ]*", guided_decoding_backend="xgrammar")
    assert so.json == SCHEMA and so.whitespace_pattern == r"[\n ]*" and not so.disable_any_whitespace
    so = params_of(build, guided_regex="a", guided_decoding_backend="auto")
    assert so.regex == "a"
    so = params_of(build, guided_choice=["a"],
                   guided_decoding_backend="xgrammar:disable-any-whitespace,no-fallback,no-additional-properties")
    assert so.disable_any_whitespace and so.disable_fallback and so.disable_additional_properties
    assert params_of(build, guided_decoding_backend="xgrammar") is None  # a backend alone constrains nothing


@BUILDERS
@pytest.mark.parametrize("backend", ["outlines", "lm-format-enforcer", "outlines:disable-any-whitespace"])
def test_backends_cserve_does_not_build_are_refused_by_name(build, backend):
    e = refused(build, guided_json=SCHEMA, guided_decoding_backend=backend)
    assert e.param == "guided_decoding_backend"
    assert repr(backend.split(":")[0]) in e.message and "xgrammar" in e.message


@BUILDERS
@pytest.mark.parametrize("backend", ["nope", "xgrammar:fast", "XGRAMMAR"])
def test_unknown_backends_and_options_are_refused(build, backend):
    assert refused(build, guided_regex="a", guided_decoding_backend=backend).param == "guided_decoding_backend"


@BUILDERS
@pytest.mark.parametrize("fields, param", [
    ({"guided_json": "{oops"}, "guided_json"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": ""}, "guided_regex"),
    ({"guided_grammar": " "}, "guided_grammar"),
    ({"guided_regex": "a", "guided_whitespace_pattern": ""}, "guided_whitespace_pattern"),
    ({"structural_tag": "{}"}, "structural_tag"),
])
def test_bad_guided_fields_are_400s_naming_the_field(build, fields, param):
    assert refused(build, **fields).param == param


@BUILDERS
@pytest.mark.parametrize("field, value", [("guided_choice", "a"), ("guided_choice", [1]), ("guided_regex", 5),
                                          ("guided_json", 5), ("structured_outputs", "x"), ("response_format", "x")])
def test_wrong_types_fail_validation_naming_the_field(build, field, value):
    with pytest.raises(ValidationError) as e:  # the server answers it as a 400 naming the field
        build(**{field: value})
    assert e.value.errors()[0]["loc"][0] == field


# -- one constraint at most -------------------------------------------------------------------


@BUILDERS
@pytest.mark.parametrize("fields, names", [
    ({"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
     ["response_format (json_object)", "structured_outputs.regex"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
      "structured_outputs": {"json": SCHEMA}}, ["response_format (json_schema)", "structured_outputs.json"]),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, ["structured_outputs.regex", "structured_outputs.choice"]),
    ({"structured_outputs": {"json_object": True}, "guided_json": SCHEMA},
     ["structured_outputs.json_object", "guided_json"]),
    ({"guided_regex": "a", "guided_choice": ["b"]}, ["guided_regex", "guided_choice"]),
    ({"guided_grammar": "root ::= \"a\"", "structural_tag": json.dumps(NEW_TAG)}, ["guided_grammar", "structural_tag"]),
    ({"response_format": NEW_TAG, "guided_regex": "a"}, ["response_format (structural_tag)", "guided_regex"]),
])
def test_more_than_one_constraint_is_refused(build, fields, names):
    e = refused(build, **fields)
    assert e.message.startswith(MULTIPLE) and all(n in e.message for n in names), e.message


# -- tool_choice ------------------------------------------------------------------------------


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def test_named_tool_choice_is_its_parameters_schema():
    assert params_of(chat, tools=TOOLS, tool_choice=named("get_weather")).json == SCHEMA
    # A tool without parameters takes an empty object (vLLM would leave such a call unconstrained).
    assert params_of(chat, tools=TOOLS, tool_choice=named("ping")).json == {"type": "object", "properties": {}}


def test_required_schema_is_vllms():
    schema = params_of(chat, tools=TOOLS, tool_choice="required").json
    assert schema == {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": [
        {"properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                        "parameters": t["function"].get("parameters") or {"type": "object", "properties": {}}},
         "required": ["name", "parameters"]} for t in TOOLS]}}
    limited = params_of(chat, tools=TOOLS, tool_choice="required", parallel_tool_calls=False).json
    assert limited == {**schema, "maxItems": 1}


@pytest.mark.parametrize("calls, ok", [
    ([{"name": "get_weather", "parameters": {"city": "Paris"}}], True),
    ([{"name": "get_time", "parameters": {"tz": "UTC"}}, {"name": "ping", "parameters": {}}], True),
    ([{"name": "get_weather", "parameters": {"city": "Rome"}}] * 3, True),
    ([], False),
    ([{"name": "get_weather"}], False),
    ([{"name": "get_weather", "parameters": {}}], False),
    ([{"name": "get_time", "parameters": {"tz": "UTC", "extra": 1}}], False),
    ([{"name": "send_mail", "parameters": {}}], False),
    ({"name": "get_weather", "parameters": {"city": "Paris"}}, False),
])
def test_required_schema_accepts_exactly_calls_to_the_tools(calls, ok):
    schema = params_of(chat, tools=TOOLS, tool_choice="required").json
    assert jsonschema_rs.is_valid(schema, calls) is ok
    one = params_of(chat, tools=TOOLS, tool_choice="required", parallel_tool_calls=False).json
    assert jsonschema_rs.is_valid(one, calls) is (ok and len(calls) == 1)


def test_named_schema_accepts_the_tools_arguments():
    schema = params_of(chat, tools=TOOLS, tool_choice=named("get_time")).json
    assert jsonschema_rs.is_valid(schema, {"tz": "Europe/Paris"})
    assert not jsonschema_rs.is_valid(schema, {"city": "Paris"})


def test_required_hoists_each_tools_defs_to_the_root():
    def tool(name, defs):
        return {"type": "function", "function": {"name": name, "parameters": {
            "type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}}, "required": ["p"], "$defs": defs}}}

    point = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    tools = [tool("a", {"Point": point}), tool("b", {"Point": point})]
    request = chat(tools=tools, tool_choice="required")
    schema = params_of(chat, tools=tools, tool_choice="required").json
    assert schema["$defs"] == {"Point": point}
    assert all("$defs" not in item["properties"]["parameters"] for item in schema["items"]["anyOf"])
    assert "$defs" in tools[0]["function"]["parameters"] and request.tools[0]["function"]["parameters"]["$defs"]
    assert jsonschema_rs.is_valid(schema, [{"name": "b", "parameters": {"p": {"x": 1}}}])
    assert not jsonschema_rs.is_valid(schema, [{"name": "b", "parameters": {"p": {"y": 1}}}])
    e = refused(chat, tools=[tool("a", {"Point": point}), tool("b", {"Point": {"type": "string"}})],
                tool_choice="required")
    assert e.message == "Tool definition 'Point' has multiple schemas, which is not supported."


def test_tool_choice_replaces_other_constraints_as_vllm():
    so = params_of(chat, tools=TOOLS, tool_choice=named("get_weather"), response_format={"type": "json_object"},
                   structured_outputs={"regex": "a", "disable_any_whitespace": True})
    assert so.json == SCHEMA and so.kind() == "json" and not so.disable_any_whitespace
    assert params_of(chat, tools=TOOLS, tool_choice="required", guided_choice=["x"]).json["type"] == "array"
    # "auto" and "none" force nothing: the request's own constraint stays.
    for choice in ("auto", "none"):
        assert params_of(chat, tools=TOOLS, tool_choice=choice, guided_regex="a").regex == "a"
    # "required" with no tools is "none", as OpenAI and vLLM.
    assert params_of(chat, tools=[], tool_choice="required") is None


def check_refused(**fields) -> APIError:
    with pytest.raises(APIError) as e:
        check_tool_choice(chat(**fields))
    assert e.value.status == 400
    return e.value


@pytest.mark.parametrize("fields, message", [
    ({"tool_choice": "required"}, "When using `tool_choice`, `tools` must be set."),
    ({"tool_choice": named("get_weather")}, "When using `tool_choice`, `tools` must be set."),
    ({"tool_choice": "auto"}, "When using `tool_choice`, `tools` must be set."),
    ({"tools": TOOLS, "tool_choice": named("send_mail")},
     "The tool specified in `tool_choice` does not match any of the specified `tools`"),
    ({"tools": TOOLS, "tool_choice": "sometimes"},
     'Invalid value for `tool_choice`: sometimes! Only named tools, "none", "auto" or "required" are supported.'),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": "get_weather"}},
     "Invalid value for `function`: `get_weather` in `tool_choice`!"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}},
     "Expected field `name` in `function` in `tool_choice`!"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": ""}}},
     "Invalid `name` in `function`: `` in `tool_choice`!"),
    ({"tools": TOOLS, "tool_choice": {"type": "retrieval", "function": {"name": "get_weather"}}}, "Invalid `type`"),
    ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": 3}}], "tool_choice": "required"}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}], "tool_choice": "required"},
     "tools[0].function.parameters"),
])
def test_tool_choice_checks_are_vllms(fields, message):
    e = check_refused(**fields)
    assert e.message.startswith(message), e.message


def test_tool_choice_none_and_auto_pass_the_checks():
    for fields in ({}, {"tool_choice": "none"}, {"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "auto"},
                   {"tools": TOOLS, "tool_choice": None}, {"tools": TOOLS, "tool_choice": "required"},
                   {"tools": TOOLS, "tool_choice": named("ping")}):
        check_tool_choice(chat(**fields))
    assert tool_choice_schema(chat(tools=TOOLS)) is None  # tools without tool_choice: "auto"


# -- parsing the forced outputs ----------------------------------------------------------------


def chunkings(text: str, rng: random.Random, count: int = 40):
    yield [text]
    yield list(text)
    for _ in range(count):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 12))))
        yield [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


def run(parsers: ChoiceParsers, pieces: list[str], engine_reason: str = "stop"):
    """Feeds the pieces as the stream does; returns (content, reasoning, tool_calls, finish_reason,
    the streamed tool_call deltas)."""
    content = reasoning = ""
    deltas = []
    for i, piece in enumerate(pieces + [""]):  # the engine's last delta may carry no text
        out = parsers.feed(piece, finished=i == len(pieces))
        content += out.content
        reasoning += out.reasoning
        deltas += out.tool_calls
    return content, reasoning, merge_tool_calls(deltas), parsers.finish_reason(engine_reason), deltas


def without_ids(calls: list[dict]) -> list[dict]:
    for c in calls:
        assert c["id"].startswith("chatcmpl-tool-") and c["type"] == "function"
    return [c["function"] for c in calls]


def required_parsers(reasoning=None, parallel=True) -> ChoiceParsers:
    return ChoiceParsers(reasoning, RequiredToolCallsParser, TOOLS, None, parallel)


def named_parsers(name="get_weather", reasoning=None) -> ChoiceParsers:
    return ChoiceParsers(reasoning, lambda tools: NamedToolCallParser(name, tools), TOOLS, None)


REQUIRED_OUTPUTS = [
    # (output, content, calls as {"name", "arguments"})
    ('[{"name": "get_weather", "parameters": {"city": "Paris"}}]', "",
     [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]),
    ('[\n  {"name":"get_time","parameters":{"tz":"Asia/Tōkyō"}},\n  {"name": "ping", "parameters": {}},'
     ' {"name": "get_weather", "parameters": {"city": "São \\"Paulo\\" [x]{y}"}}\n]', "",
     [{"name": "get_time", "arguments": '{"tz": "Asia/Tōkyō"}'}, {"name": "ping", "arguments": "{}"},
      {"name": "get_weather", "arguments": '{"city": "São \\"Paulo\\" [x]{y}"}'}]),
    ('[{"name": "get_weather", "parameters": {"city": {"nested": [1, {"a": null}]}}}]', "",
     [{"name": "get_weather", "arguments": '{"city": {"nested": [1, {"a": null}]}}'}]),
    # cut short by max_tokens: the complete calls, the rest as content
    ('[{"name": "ping", "parameters": {}}, {"name": "get_weather", "parameters": {"ci',
     '{"name": "get_weather", "parameters": {"ci', [{"name": "ping", "arguments": "{}"}]),
    ('[{"name": "get_weather", "par', '[{"name": "get_weather", "par', []),
    # not an array of calls (unconstrained): content, verbatim
    ("I cannot call tools.", "I cannot call tools.", []),
    ('[{"tool": "x"}]', '[{"tool": "x"}]', []),
    ("[]", "[]", []),
    ('[{"name": "ping", "parameters": {}}] trailing', "trailing", [{"name": "ping", "arguments": "{}"}]),
    ('[{"name": "ping", "parameters": {}} {"name": "ping"}]', '{"name": "ping"}]', [{"name": "ping", "arguments": "{}"}]),
]


@pytest.mark.parametrize("output, content, calls", REQUIRED_OUTPUTS)
def test_required_outputs_stream_exactly_as_they_parse_whole(output, content, calls):
    whole = run(required_parsers(), [output])
    assert whole[0] == content and without_ids(whole[2]) == calls
    assert whole[3] == ("tool_calls" if calls else "stop")
    rng = random.Random(output)
    for pieces in chunkings(output, rng):
        streamed = run(required_parsers(), pieces)
        assert streamed[0] == content and without_ids(streamed[2]) == calls, pieces
        # each call goes out whole, once: id, name and arguments in one delta
        assert all(d.id and d.name is not None for d in streamed[4]) and len(streamed[4]) == len(calls)


NAMED_OUTPUTS = ['{"city": "Paris"}', '{ "city" : "Zürich \\u00e9 \\" }" }', '{"city": "Par', ""]


@pytest.mark.parametrize("output", NAMED_OUTPUTS)
def test_named_outputs_stream_exactly_as_they_parse_whole(output):
    content, _, calls, reason, deltas = run(named_parsers(), [output])
    assert content == "" and without_ids(calls) == [{"name": "get_weather", "arguments": output}]
    assert reason == "stop" and len([d for d in deltas if d.id]) == 1
    for pieces in chunkings(output, random.Random(output)):
        s_content, _, s_calls, s_reason, s_deltas = run(named_parsers(), pieces)
        assert (s_content, without_ids(s_calls), s_reason) == ("", without_ids(calls), "stop"), pieces
        # the id and name once, first; then arguments only
        assert s_deltas[0].id and s_deltas[0].name == "get_weather"
        assert all(d.id is None and d.name is None for d in s_deltas[1:])


def test_finish_reasons_are_vllms():
    output = '[{"name": "ping", "parameters": {}}]'
    assert run(required_parsers(), [output], "stop")[3] == "tool_calls"
    assert run(required_parsers(), [output], "length")[3] == "length"  # vLLM: "tool_calls" only after a stop
    assert run(required_parsers(), ["no calls"], "stop")[3] == "stop"
    assert run(named_parsers(), ['{"city": "x"}'], "stop")[3] == "stop"  # named: the engine's reason
    assert run(named_parsers(), ['{"city": "x'], "length")[3] == "length"


def test_parallel_tool_calls_false_keeps_the_first_call():
    output = '[{"name": "ping", "parameters": {}}, {"name": "get_time", "parameters": {"tz": "UTC"}}]'
    for pieces in chunkings(output, random.Random(1), 10):
        calls = run(required_parsers(parallel=False), pieces)[2]
        assert without_ids(calls) == [{"name": "ping", "arguments": "{}"}]


@pytest.mark.parametrize("make", [required_parsers, named_parsers])
def test_forced_calls_come_after_the_reasoning(make):
    reasoning_cls = get_reasoning_parser("deepseek_r1")
    body = '[{"name": "get_weather", "parameters": {"city": "Oslo"}}]' if make is required_parsers \
        else '{"city": "Oslo"}'
    output = "<think>The user wants {weather}: [call] it.</think>" + body
    whole = run(make(reasoning=reasoning_cls), [output])
    assert whole[1] == "The user wants {weather}: [call] it." and whole[0] == ""
    assert [c["name"] for c in without_ids(whole[2])] == ["get_weather"]
    for pieces in chunkings(output, random.Random(7), 30):
        streamed = run(make(reasoning=reasoning_cls), pieces)
        assert streamed[:2] == whole[:2] and without_ids(streamed[2]) == without_ids(whole[2]), pieces


# -- the server path ------------------------------------------------------------------------------


def fake_state(tokenizer=object()):
    args = SimpleNamespace(reasoning_parser="", enable_auto_tool_choice=False, tool_call_parser=None,
                           scheduling_policy="fcfs")
    engine = SimpleNamespace(model_info=SimpleNamespace(max_num_seqs=8))
    return SimpleNamespace(generation_defaults={}, tokenizer=tokenizer, args=args, engine=engine)


@BUILDERS
def test_sampling_params_carry_the_constraint(build):
    state = fake_state()
    request = build(response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}}, n=2)
    check_common(state, request)  # response_format is no longer refused
    first = sampling_params(state, request, 16, None, None)
    assert first.structured_outputs.json == SCHEMA
    assert sampling_params(state, request, 16, None, None).structured_outputs is first.structured_outputs
    assert sampling_params(state, build(), 16, None, None).structured_outputs is None
    with pytest.raises(APIError) as e:
        sampling_params(state, build(guided_choice=[]), 16, None, None)
    assert e.value.param == "guided_choice"
    with pytest.raises(APIError) as e:
        sampling_params(fake_state(tokenizer=None), build(guided_regex="a"), 16, None, None)
    assert "skip_tokenizer_init" in e.value.message


def test_requests_of_other_dialects_have_no_constraint():
    state = fake_state()  # /generate hands sampling_params an adapted namespace without these fields
    adapted = SimpleNamespace(n=1, temperature=None, top_p=None, top_k=None, min_p=None, repetition_penalty=None,
                              presence_penalty=None, frequency_penalty=None, seed=None, stop=None,
                              stop_token_ids=None, ignore_eos=False, min_tokens=0, skip_special_tokens=True,
                              spaces_between_special_tokens=True, include_stop_str_in_output=False, logit_bias=None,
                              allowed_token_ids=None)
    assert sampling_params(state, adapted, 16, None, None).structured_outputs is None


def test_chat_parsing_runs_the_forced_parsers_without_a_tool_parser_flag():
    state = fake_state()
    for choice, output in (("required", '[{"name": "ping", "parameters": {}}]'),
                           (named("get_time"), '{"tz": "UTC"}')):
        request = chat(tools=TOOLS, tool_choice=choice)
        parsing = ChatParsing(state, request)
        assert parsing.active and not parsing.needs_special_tokens
        content, _, calls, _, _ = run(parsing.for_choice(), [output])
        assert content == "" and len(calls) == 1
    assert not ChatParsing(state, chat(tools=TOOLS, tool_choice="none")).active
    one = ChatParsing(state, chat(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)).for_choice()
    two_calls = '[{"name": "ping", "parameters": {}}, {"name": "ping", "parameters": {}}]'
    assert len(run(one, [two_calls])[2]) == 1


@BUILDERS
@pytest.mark.parametrize("backend", ["guidance", "guidance:disable-any-whitespace", "xgrammar", "auto"])
def test_the_request_backend_travels_with_the_constraint(build, backend):
    so = params_of(build, guided_regex="a+", guided_decoding_backend=backend)
    assert so.regex == "a+" and so.backend == backend.split(":")[0]
    assert so.disable_any_whitespace is backend.endswith("disable-any-whitespace")
