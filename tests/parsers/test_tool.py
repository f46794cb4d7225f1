"""Tool-call parsers: for every parser and realistic outputs, any split of the text into
chunks gives the same (content, calls) as the whole text, and that is the expected value."""

from __future__ import annotations

import json
import random
import re
import textwrap

import pytest
from cserve.parsers.tool import (
    TOOL_PARSERS,
    ToolDelta,
    ToolParser,
    assemble,
    get_tool_parser,
    load_tool_parser_plugin,
)

W = {"city": "Paris", "unit": "celsius"}
NESTED = {"query": {"filters": [{"field": "price", "op": "<", "value": 9.5}], "tags": ["a", "b"]},
          "limit": 3, "strict": True, "note": None}
UNI = {"text": "Grüße aus Köln — 東京 🌸", "lang": "de"}

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
        "query": {"type": "object"}, "limit": {"type": "integer"}, "strict": {"type": "boolean"},
        "note": {"type": ["string", "null"]}}}}},
    {"type": "function", "function": {"name": "translate", "parameters": {"type": "object", "properties": {
        "text": {"type": "string"}, "lang": {"type": "string"}}}}},
]

J = lambda d: json.dumps(d, ensure_ascii=False)


def _py(d: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in d.items())


# Per format: how one call is written. None = format writes calls only inside a list (see below).
def hermes_call(n, a): return f'<tool_call>\n{J({"name": n, "arguments": a})}\n</tool_call>'
def xml_call(n, a):
    ps = "".join(f"<parameter={k}>\n{v if isinstance(v, str) else J(v)}\n</parameter>\n" for k, v in a.items())
    return f"<tool_call>\n<function={n}>\n{ps}</function>\n</tool_call>"
def glm_call(n, a):
    ps = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v if isinstance(v, str) else J(v)}</arg_value>\n"
                 for k, v in a.items())
    return f"<tool_call>{n}\n{ps}</tool_call>"
def minimax_block(calls):
    inv = ""
    for n, a in calls:
        ps = "".join(f'<parameter name="{k}">{v if isinstance(v, str) else J(v)}</parameter>\n' for k, v in a.items())
        inv += f'<invoke name="{n}">\n{ps}</invoke>\n'
    return f"<minimax:tool_call>\n{inv}</minimax:tool_call>"
def ds3_block(calls):
    b = "".join(f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{n}\n```json\n{J(a)}\n```<｜tool▁call▁end｜>"
                for n, a in calls)
    return f"<｜tool▁calls▁begin｜>{b}<｜tool▁calls▁end｜>"
def ds31_block(calls):
    b = "".join(f"<｜tool▁call▁begin｜>{n}<｜tool▁sep｜>{J(a)}<｜tool▁call▁end｜>" for n, a in calls)
    return f"<｜tool▁calls▁begin｜>{b}<｜tool▁calls▁end｜>"
def kimi_block(calls):
    b = "".join(f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{J(a)}<|tool_call_end|>"
                for i, (n, a) in enumerate(calls))
    return f"<|tool_calls_section_begin|>{b}<|tool_calls_section_end|>"
def harmony_block(calls):
    # gpt-oss: the prompt ends with <|start|>assistant, so the output's first message has no <|start|>
    return "".join(("<|start|>assistant" if i else "") + f"<|channel|>commentary to=functions.{n} <|constrain|>json"
                   f"<|message|>{J(a)}<|call|>" for i, (n, a) in enumerate(calls))
def jlist(calls, key="arguments"): return J([{"name": n, key: a} for n, a in calls])


# parser -> (block(calls) -> text, calls may follow text?, calls may be preceded by text?)
FORMATS = {
    "hermes": (lambda cs: "\n".join(hermes_call(n, a) for n, a in cs), True),
    "qwen3_coder": (lambda cs: "\n".join(xml_call(n, a) for n, a in cs), True),
    "qwen3_xml": (lambda cs: "\n".join(xml_call(n, a) for n, a in cs), True),
    "glm45": (lambda cs: "\n".join(glm_call(n, a) for n, a in cs), True),
    "minimax_m2": (minimax_block, True),
    "deepseek_v3": (ds3_block, True),
    "deepseek_v31": (ds31_block, True),
    "kimi_k2": (kimi_block, True),
    "openai": (harmony_block, True),
    "mistral": (lambda cs: "[TOOL_CALLS]" + jlist(cs), True),
    "jamba": (lambda cs: f"<tool_calls>{jlist(cs)}</tool_calls>", True),
    "granite": (lambda cs: "<|tool_call|>" + jlist(cs), True),
    "phi4_mini_json": (lambda cs: "functools" + jlist(cs), True),
    "internlm": (lambda cs: "".join(f'<|action_start|><|plugin|>\n{J({"name": n, "parameters": a})}<|action_end|>'
                                    for n, a in cs), True),
    "llama3_json": (lambda cs: "; ".join(J({"name": n, "parameters": a}) for n, a in cs), False),
    "xlam": (lambda cs: jlist(cs), False),
    "pythonic": (lambda cs: "[" + ", ".join(f"{n}({_py(a)})" for n, a in cs) + "]", False),
    "llama4_pythonic": (lambda cs: "<|python_start|>[" + ", ".join(f"{n}({_py(a)})" for n, a in cs)
                        + "]<|python_end|>", False),
}

ONE = [("get_weather", W)]
TWO = [("get_weather", W), ("get_weather", {"city": "Tōkyō", "unit": "fahrenheit"})]
MIX = [("search", NESTED), ("translate", UNI)]
BEFORE = "Let me check that for you.\n"
AFTER = "Done — I asked for the weather."


def cases():
    out = []
    for name, (block, anywhere) in FORMATS.items():
        for label, calls in (("one", ONE), ("parallel", TWO), ("nested_unicode", MIX)):
            out.append((name, label, block(calls), "", calls))
        text = "Paris is lovely in spring. No tools needed; 東京 too! [1] {x}"
        out.append((name, "no_call", text, text, []))
        if anywhere:
            out.append((name, "text_around", BEFORE + block(TWO) + "\n\n" + AFTER, BEFORE + AFTER, TWO))
        else:
            out.append((name, "text_after", "  " + block(MIX) + "\n" + AFTER, AFTER, MIX))
    # malformed / incomplete calls are returned as content, verbatim
    bad = {
        "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>',
        "qwen3_coder": "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",
        "qwen3_xml": "<tool_call>\n<function=get_weather\n</tool_call>",
        "glm45": "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris",
        "minimax_m2": '<minimax:tool_call>\n<invoke name="get_weather">\n<parameter name="city">Paris',
        "deepseek_v3": "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Pa",
        "deepseek_v31": "<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": Paris}<｜tool▁call▁end｜>",
        "kimi_k2": "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\"",
        "openai": '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Pa',
        "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Par',
        "jamba": '<tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}]</tool_calls>',
        "granite": '<|tool_call|>[{"name": "get_weather", "argu',
        "phi4_mini_json": 'functools[{"name": "get_weather", "arguments": {"city": "Paris"}}',
        "internlm": '<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Pa',
        "llama3_json": '{"name": "get_weather", "parameters": {"city": "Paris"',
        "xlam": '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "x"',
        "pythonic": '[get_weather(city="Paris", unit="celsius"), search(query=',
        "llama4_pythonic": '[get_weather(city="Paris", unit=celsius + 1)]',
    }
    for name, text in bad.items():
        expected = text.replace("<|python_start|>", "")
        out.append((name, "malformed", BEFORE + text if FORMATS[name][1] else text,
                    (BEFORE if FORMATS[name][1] else "") + expected, []))
    return out


CASES = cases()


def _strip_ids(res):
    content, calls = res
    return content, [(c["function"]["name"], c["function"]["arguments"]) for c in calls]


def run(name, chunks, tools=TOOLS):
    p = get_tool_parser(name)(tools)
    deltas = [p.feed(c) for c in chunks] + [p.finish()]
    return assemble(deltas)


def splits(text: str, seed: int):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


TOKENS = re.compile(r"<[^<>\s]{1,40}>|\s+|\w{1,4}|.", re.DOTALL)


@pytest.mark.parametrize("name,label,text,content,calls", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_streamed_equals_whole_equals_expected(name, label, text, content, calls):
    whole = run(name, [text])
    got_content, got_calls = whole
    assert got_content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got_calls] == \
        [(n, a) for n, a in calls]
    for c in got_calls:
        assert c["type"] == "function" and c["id"]
    base = _strip_ids(whole)
    assert _strip_ids(run(name, list(text))) == base
    assert _strip_ids(run(name, TOKENS.findall(text))) == base
    for seed in range(250):
        assert _strip_ids(run(name, splits(text, seed))) == base, seed


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_fuzz_split_invariance(name):
    # random mixes of calls, broken calls, partial markers and prose: whatever the result,
    # streaming it in any chunks must give the same as the whole text
    block = FORMATS[name][0]
    frags = [block(ONE), block(MIX), "hello ", "\n", " ", "[", "{", "<", "<tool", "}", "]",
             "functools", "<|tool_call|>", "[TOOL_CALLS]", "<tool_call>", "</tool_call>", "```json\n",
             block(ONE)[:len(block(ONE)) // 2], block(ONE)[len(block(ONE)) // 2:], "ünï 🌸", ";"]
    rng = random.Random(name)
    for _ in range(40):
        text = "".join(rng.choice(frags) for _ in range(rng.randint(1, 6)))
        base = _strip_ids(run(name, [text]))
        assert _strip_ids(run(name, list(text))) == base, text
        for seed in range(10):
            assert _strip_ids(run(name, splits(text, seed) if len(text) > 1 else [text])) == base, text


def test_all_parsers_covered():
    assert set(FORMATS) <= set(TOOL_PARSERS)
    for name, cls in TOOL_PARSERS.items():
        assert cls.name == name and issubclass(cls, ToolParser)


def test_many_random_splits_of_a_long_output():
    # a few hundred random splits of one long output for the main parsers
    text = BEFORE + FORMATS["hermes"][0](TWO + MIX) + "\n" + AFTER
    base = _strip_ids(run("hermes", [text]))
    assert len(base[1]) == 4
    for seed in range(300):
        assert _strip_ids(run("hermes", splits(text, 1000 + seed))) == base


def test_ids_and_deltas():
    p = get_tool_parser("hermes")()
    d1 = p.feed("Hi <tool_")
    assert d1 == ToolDelta(content="Hi ")
    d2 = p.feed('call>{"name": "f", "arguments": {}}</tool_call>')
    assert d2.content == "" and len(d2.calls) == 1
    c = d2.calls[0]
    assert c.index == 0 and c.id.startswith("chatcmpl-tool-") and c.name == "f" and c.arguments == "{}"
    assert p.finish() == ToolDelta()
    m = get_tool_parser("mistral")()
    (call,) = (m.feed('[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]').calls + m.finish().calls)
    assert len(call.id) == 9 and call.id.isalnum()
    k = get_tool_parser("kimi_k2")()
    (kc,) = k.feed("<|tool_call_begin|>functions.f:3<|tool_call_argument_begin|>{}<|tool_call_end|>").calls
    assert kc.id == "functions.f:3" and kc.name == "f"


def test_variants():
    # mistral v11+ (name{args}) and v13 (name[ARGS]{args}), several [TOOL_CALLS]
    for text in ('[TOOL_CALLS]get_weather{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]search{"limit": 1}',
                 '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]search[ARGS]{"limit": 1}'):
        for chunks in ([text], list(text)):
            content, calls = run("mistral", chunks)
            assert content == "" and [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                                      for c in calls] == [("get_weather", W), ("search", {"limit": 1})]
    # llama3_json with <|python_tag|>; granite 3.1 <tool_call>; xlam in a code fence
    assert _strip_ids(run("llama3_json", ['<|python_tag|>{"name": "f", "arguments": {"a": 1}}'])) == ("", [("f", '{"a": 1}')])
    assert _strip_ids(run("granite", ['<tool_call>[{"name": "f", "arguments": {}}]'])) == ("", [("f", "{}")])
    fenced = '```json\n[{"name": "f", "arguments": {"a": "é"}}]\n```'
    for chunks in ([fenced], list(fenced)):
        assert _strip_ids(run("xlam", chunks)) == ("", [("f", '{"a": "é"}')])
    # schema-typed XML values; untyped stays a string for qwen3_coder
    xml = "<tool_call>\n<function=search>\n<parameter=limit>\n5\n</parameter>\n<parameter=strict>\nfalse\n</parameter>\n<parameter=other>\n7\n</parameter>\n</function>\n</tool_call>"
    assert json.loads(run("qwen3_coder", [xml])[1][0]["function"]["arguments"]) == {"limit": 5, "strict": False, "other": "7"}
    # phi4: the word functools in prose is content
    assert run("phi4_mini_json", ["use functools.partial here"]) == ("use functools.partial here", [])


# gpt-oss (harmony) outputs as the `openai` parser sees them without a reasoning parser; the stop
# token that ends an output (<|call|>, <|return|>) is not text, so most end without a closer.
H = "<|start|>assistant"
HCALL = "<|channel|>commentary to=functions.{} <|constrain|>json<|message|>{}"
THINK = "<|channel|>analysis<|message|>The user wants the weather; call get_weather.<|end|>"
WC = '{"city":"Tōkyō","unit":"celsius"}'
SC = '{"query":{"filters":[{"field":"price","op":"<","value":9.5}],"tags":["a","b"]},"limit":3,"note":null}'
GPTOSS = [
    ("analysis_then_call", THINK + H + HCALL.format("get_weather", WC), "", [("get_weather", WC)]),
    ("preamble_parallel_nested",
     THINK + H + "<|channel|>commentary<|message|>I'll look up both — 東京 first.<|end|>"
     + H + HCALL.format("get_weather", WC) + "<|call|>" + H + HCALL.format("search", SC),
     "I'll look up both — 東京 first.", [("get_weather", WC), ("search", SC)]),
    ("call_from_analysis_channel", "<|channel|>analysis to=functions.search <|constrain|>json<|message|>" + SC
     + "<|call|>", "", [("search", SC)]),
    ("recipient_before_channel", "<|start|>assistant to=functions.translate<|channel|>commentary json<|message|>"
     + J(UNI), "", [("translate", J(UNI))]),
    ("final_only", THINK + H + "<|channel|>final<|message|>Grüße — 東京 🌸 {not a call} <b>to=x</b>",
     "Grüße — 東京 🌸 {not a call} <b>to=x</b>", []),
    ("final_with_stop_text", "<|channel|>final<|message|>It is 21 °C.<|return|>", "It is 21 °C.", []),
    ("call_then_final", HCALL.format("get_weather", WC) + "<|call|>" + H + "<|channel|>final<|message|>Done.",
     "Done.", [("get_weather", WC)]),
    ("call_cut_by_next_message", HCALL.format("get_weather", WC) + H + "<|channel|>final<|message|>ok",
     "ok", [("get_weather", WC)]),
    ("bad_json", "<|channel|>commentary<|message|>Checking.<|end|>" + H + HCALL.format("get_weather", '{"city": Paris}')
     + "<|call|>", "Checking." + H + HCALL.format("get_weather", '{"city": Paris}') + "<|call|>", []),
    ("not_an_object", HCALL.format("get_weather", '["Paris"]'), HCALL.format("get_weather", '["Paris"]'), []),
    ("cut_off", THINK + H + HCALL.format("get_weather", '{"city":"Tō'),
     H + HCALL.format("get_weather", '{"city":"Tō'), []),
    ("builtin_tool", "<|channel|>analysis to=browser.search code<|message|>{\"query\":\"x\"}<|call|>",
     "<|channel|>analysis to=browser.search code<|message|>{\"query\":\"x\"}<|call|>", []),
    ("no_function_name", HCALL.format("", "{}"), HCALL.format("", "{}"), []),
    ("broken_header", "<|channel|>commentary to=functions.f <|constrain|>json" + H + "<|channel|>final<|message|>Hi",
     "<|channel|>commentary to=functions.f <|constrain|>json" + "Hi", []),
    ("header_cut_off", THINK + H + "<|channel|>comm", H + "<|channel|>comm", []),
    ("plain_text", "No harmony here <|not a marker|> <|chan", "No harmony here <|not a marker|> <|chan", []),
]


@pytest.mark.parametrize("label,text,content,calls", GPTOSS, ids=[g[0] for g in GPTOSS])
def test_gptoss_outputs(label, text, content, calls):
    # arguments are the body as generated; any split gives the same
    whole = _strip_ids(run("openai", [text]))
    assert whole == (content, calls)
    assert _strip_ids(run("openai", list(text))) == whole
    assert _strip_ids(run("openai", TOKENS.findall(text))) == whole
    for seed in range(200):
        assert _strip_ids(run("openai", splits(text, seed))) == whole, seed


def test_gptoss_call_streams_whole_once_complete():
    p = get_tool_parser("openai")()
    assert p.needs_special_tokens
    assert p.feed("<|channel|>commentary<|message|>Let me check") == ToolDelta(content="Let me check")
    assert p.feed(".<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather") == ToolDelta(content=".")
    assert p.feed(' <|constrain|>json<|message|>{"city":"Paris"}') == ToolDelta()  # a closer may follow
    d = p.feed("<|call|>")
    (c,) = d.calls
    assert d.content == "" and c.index == 0 and c.id.startswith("chatcmpl-tool-")
    assert (c.name, c.arguments) == ("get_weather", '{"city":"Paris"}')
    q = get_tool_parser("openai")()
    assert q.feed('<|channel|>commentary to=functions.f <|constrain|>json<|message|>{"a": 1}') == ToolDelta()
    (c,) = q.finish().calls  # the hidden <|call|>: complete at the end of the output
    assert (c.name, c.arguments) == ("f", '{"a": 1}')


def test_unknown_parser():
    with pytest.raises(ValueError, match="hermes"):
        get_tool_parser("nope")


def test_plugin(tmp_path):
    f = tmp_path / "my_parser.py"
    f.write_text(textwrap.dedent('''
        from cserve.parsers.tool import Call, ToolParser, register_tool_parser

        @register_tool_parser("my_calls")
        class MyParser(ToolParser):
            starts = ("CALL:",)
            end = "\\n"
            accept_unclosed = True
            def parse_body(self, body):
                name, _, arg = body.strip().partition(" ")
                return [Call(name.strip(), '{"x": "%s"}' % arg.strip())]
    '''))
    load_tool_parser_plugin(str(f))
    try:
        assert get_tool_parser("my_calls").name == "my_calls"
        text = "ok\nCALL: f 1\nCALL: g 2"
        want = ("ok\n", [("f", '{"x": "1"}'), ("g", '{"x": "2"}')])
        assert _strip_ids(run("my_calls", [text])) == want
        assert _strip_ids(run("my_calls", list(text))) == want
    finally:
        TOOL_PARSERS.pop("my_calls", None)
    with pytest.raises(ValueError, match="not a file"):
        load_tool_parser_plugin(str(tmp_path / "missing.py"))
