"""Reasoning parsers: vLLM's names and splits, and streamed == not streamed for any cut of the text."""

from __future__ import annotations

import itertools
import random
import re
import textwrap
import zlib

import pytest
from cserve.parsers.reasoning import (
    REASONING_PARSERS,
    ReasoningParser,
    get_reasoning_parser,
    load_reasoning_parser_plugin,
)

NAMES = ["deepseek_r1", "deepseek_v3", "qwen3", "granite", "glm45", "mistral", "openai_gptoss", "kimi_k2",
         "minimax_m2", "minimax_m2_append_think", "hunyuan_a13b", "step3"]

GPT_TOOL = ("<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"city": "Paris"}<|call|>')

# (parser, chat_template_kwargs, output text, expected reasoning, expected content)
CASES = [
    # deepseek_r1: the template opens <think>, so the output usually lacks it
    ("deepseek_r1", None, "<think>Let me add 2 and 2.</think>The answer is 4.", "Let me add 2 and 2.", "The answer is 4."),
    ("deepseek_r1", None, "Okay, 2+2.\n</think>\n\nThe answer is **4**.", "Okay, 2+2.\n", "\n\nThe answer is **4**."),
    ("deepseek_r1", None, "Still thinking about <b>tags</b> and </thin", "Still thinking about <b>tags</b> and </thin", ""),
    ("deepseek_r1", None, "<think></think>Direct.", "", "Direct."),
    ("deepseek_r1", None, "</think>", "", ""),
    ("deepseek_r1", None, "", "", ""),
    ("deepseek_r1", None, "Héllo 世界 🤔</think>答案是 ✓", "Héllo 世界 🤔", "答案是 ✓"),
    ("deepseek_r1", None, "pre <think>inner</think>post <think>not</think> again", "pre inner",
     "post <think>not</think> again"),
    ("deepseek_r1", None, "a <thinking> b <th </think>c", "a <thinking> b <th ", "c"),
    # deepseek_v3: thinking is opt-in
    ("deepseek_v3", None, "<think>x</think>y", "", "<think>x</think>y"),
    ("deepseek_v3", {"thinking": True}, "reason</think>answer", "reason", "answer"),
    ("deepseek_v3", {"thinking": False}, "reason</think>answer", "", "reason</think>answer"),
    # qwen3
    ("qwen3", None, "<think>\nI should greet.\n</think>\n\nHello!", "\nI should greet.\n", "\n\nHello!"),
    ("qwen3", None, "I should greet.\n</think>\n\nHello!", "I should greet.\n", "\n\nHello!"),
    ("qwen3", None, "unfinished reasoning", "unfinished reasoning", ""),
    ("qwen3", {"enable_thinking": False}, "Hello! </think> stays", "", "Hello! </think> stays"),
    ("qwen3", {"enable_thinking": True}, "r</think>c", "r", "c"),
    ("qwen3", None, "Call it.\n<tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n</function>\n</tool_call>",
     "Call it.\n", "<tool_call>\n<function=get_weather>\n<parameter=city>Paris</parameter>\n</function>\n</tool_call>"),
    ("qwen3", None, "The <tool_call> tag wraps calls.</think>Done", "The <tool_call> tag wraps calls.", "Done"),
    ("qwen3", None, "ends on <tool_call>\n<func", "ends on <tool_call>\n<func", ""),
    # glm45: the model opens <think> itself; none means no reasoning
    ("glm45", None, "<think>Plan the reply.</think>Sure, here it is.", "Plan the reply.", "Sure, here it is."),
    ("glm45", None, "No thinking here.", "", "No thinking here."),
    ("glm45", None, "\n<think>half", "half", "\n"),
    ("glm45", None, "a</think>b", "", "a</think>b"),
    ("glm45", None, "<think>r</think>c<think>d</think>", "r", "c<think>d</think>"),
    # granite
    ("granite", None, "Here is my thought process:\nStep 1.\nHere is my response:\nDone.", "\nStep 1.\n", "\nDone."),
    ("granite", None, "Here's my thought process: quick Here's my response: ok", " quick ", " ok"),
    ("granite", None, "Here is my thought process: never answered", " never answered", ""),
    ("granite", None, "Hello! Here is my thought process: x Here is my response: y", "",
     "Hello! Here is my thought process: x Here is my response: y"),
    ("granite", None, "Here is my", "", "Here is my"),
    ("granite", None, "Here is my thought process: Here is my reply: Here is my response:", " Here is my reply: ", ""),
    # mistral
    ("mistral", None, "[THINK]Compute 6*7.[/THINK]42", "Compute 6*7.", "42"),
    ("mistral", None, "Just content.", "", "Just content."),
    ("mistral", None, "[THINK]not done", "not done", ""),
    ("mistral", None, "pre [THINK]r[/THINK] post [THINK]x", "r", "pre  post [THINK]x"),
    ("mistral", None, "a[/THINK]b", "", "ab"),
    ("mistral", None, "[THINK][/THINK]", "", ""),
    # gpt-oss harmony
    ("openai_gptoss", None,
     "<|channel|>analysis<|message|>User asks 2+2.<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>",
     "User asks 2+2.", "4"),
    ("openai_gptoss", None,
     ("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>analysis<|message|>b<|end|>"
      "<|start|>assistant<|channel|>final<|message|>Ünïcode ✓<|end|>"), "a\nb", "Ünïcode ✓"),
    ("openai_gptoss", None, "<|channel|>analysis<|message|>still thinking <|en", "still thinking <|en", ""),
    ("openai_gptoss", None, "<|channel|>analysis<|message|>Need weather.<|end|>" + GPT_TOOL, "Need weather.", GPT_TOOL),
    ("openai_gptoss", None, "<|channel|>final<|message|>Hi<|return|>", "", "Hi"),
    ("openai_gptoss", None, "<|channel|>commentary<|message|>Checking.<|end|>" + GPT_TOOL, "", "Checking." + GPT_TOOL),
    ("openai_gptoss", None, "<|channel|>analysis<|mess", "", ""),
    # kimi_k2
    ("kimi_k2", None, "<think>Let me see.</think>Answer.", "Let me see.", "Answer."),
    ("kimi_k2", None, "Let me see.</think>Answer.", "Let me see.", "Answer."),
    ("kimi_k2", None, "Use a tool.<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0",
     "Use a tool.", "<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0"),
    ("kimi_k2", None, "x <think>y</think>z", "x <think>y", "z"),
    ("kimi_k2", {"thinking": False}, "<think>y</think>z", "", "<think>y</think>z"),
    # minimax_m2
    ("minimax_m2", None, "Think about it.\n</think>\n\nResult", "Think about it.\n", "\n\nResult"),
    ("minimax_m2", None, "<think>x</think>", "x", ""),
    ("minimax_m2_append_think", None, "Think.</think>Result", "", "<think>Think.</think>Result"),
    ("minimax_m2_append_think", None, "", "", "<think>"),
    # hunyuan_a13b
    ("hunyuan_a13b", None, "<think>\nWeigh options.\n</think>\n<answer>\nPick B.\n</answer>", "Weigh options.", "Pick B."),
    ("hunyuan_a13b", None, "<think>\n\n</think>\n<answer>\nFast.\n</answer>", "", "Fast."),
    ("hunyuan_a13b", None, "No tags at all", "", "No tags at all"),
    ("hunyuan_a13b", None, "<think>\npartial\n</thi", "partial\n</thi", ""),
    # step3: no start marker at all
    ("step3", None, "reasoning here</think>content here", "reasoning here", "content here"),
    ("step3", None, "only reasoning", "only reasoning", ""),
    ("step3", None, "</think></think>", "", "</think>"),
]

_TOKEN = re.compile(r"<\|[a-z_]+\|>|</?[a-z_]+>|\[/?THINK\]|\s+|\w+|.", re.DOTALL)


def run(name: str, kwargs: dict | None, chunks: list[str]) -> tuple[str, str]:
    p = get_reasoning_parser(name)(kwargs)
    rs, cs = [], []
    for ch in chunks:
        r, c = p.feed(ch)
        rs.append(r)
        cs.append(c)
    r, c = p.finish()
    return "".join(rs) + r, "".join(cs) + c


def splits(text: str, seed: int):
    """Character by character, token-like pieces, and random cuts (fixed seed)."""
    yield list(text)
    toks = _TOKEN.findall(text)
    assert "".join(toks) == text
    yield toks
    rng = random.Random(seed)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(len(text) - 1, 12)))) if len(text) > 1 else []
        b = [0, *cuts, len(text)]
        yield [text[i:j] for i, j in itertools.pairwise(b)]
    for _ in range(40):  # groups of tokens, as a detokenizer hands them out
        out, i = [], 0
        while i < len(toks):
            n = rng.randint(1, 4)
            out.append("".join(toks[i:i + n]))
            i += n
        yield out


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_split_and_streaming_equals_non_streaming(case):
    name, kwargs, text, want_r, want_c = case
    whole = run(name, kwargs, [text])
    assert whole == (want_r, want_c)
    for i, chunks in enumerate(splits(text, seed=zlib.crc32(text.encode()))):
        assert run(name, kwargs, chunks) == whole, (i, chunks)


def test_markers_held_back_only_while_undecided():
    p = get_reasoning_parser("deepseek_r1")()
    assert p.feed("abc</th") == ("abc", "")
    assert not p.reasoning_ended
    assert p.feed("ink>de") == ("", "de")
    assert p.reasoning_ended
    assert p.feed("</think>") == ("", "</think>")
    p = get_reasoning_parser("deepseek_r1")()
    assert p.feed("x </") == ("x ", "")
    assert p.finish() == ("</", "")


@pytest.mark.parametrize("name,kwargs,chunks,ended", [
    ("qwen3", None, ["thinking"], False),
    ("qwen3", None, ["t</think>"], True),
    ("qwen3", {"enable_thinking": False}, [], True),
    ("deepseek_v3", None, [], True),
    ("glm45", None, ["<think>r"], False),
    ("glm45", None, ["plain answer"], True),
    ("mistral", None, ["[THINK]r[/THINK]"], True),
    ("openai_gptoss", None, ["<|channel|>analysis<|message|>x<|end|>"], False),
    ("openai_gptoss", None, ["<|channel|>analysis<|message|>x<|end|><|start|>assistant<|channel|>final<|message|>"], True),
    ("granite", None, ["Here is my thought process: a"], False),
    ("hunyuan_a13b", None, ["<think>\na\n</think>\n<answer>\n"], True),
])
def test_reasoning_ended(name, kwargs, chunks, ended):
    p = get_reasoning_parser(name)(kwargs)
    for c in chunks:
        p.feed(c)
    assert p.reasoning_ended is ended


def test_registry_names_and_flags():
    for n in NAMES:
        cls = get_reasoning_parser(n)
        assert issubclass(cls, ReasoningParser) and REASONING_PARSERS[n] is cls and cls.name == n
    assert get_reasoning_parser("mistral").needs_special_tokens
    assert get_reasoning_parser("openai_gptoss").needs_special_tokens
    with pytest.raises(ValueError, match="deepseek_r1"):
        get_reasoning_parser("no_such_parser")


def test_plugin_registers_itself(tmp_path):
    plugin = tmp_path / "my_parser.py"
    plugin.write_text(textwrap.dedent('''
        from cserve.parsers.reasoning import ThinkReasoningParser, register_reasoning_parser

        @register_reasoning_parser("my_reasoner")
        class MyReasoner(ThinkReasoningParser):
            start_token = "<reason>"
            end_token = "</reason>"
    '''))
    try:
        load_reasoning_parser_plugin(str(plugin))
        cls = get_reasoning_parser("my_reasoner")
        assert cls.name == "my_reasoner"
        assert run("my_reasoner", None, ["<reason>a</rea", "son>b"]) == ("a", "b")
    finally:
        REASONING_PARSERS.pop("my_reasoner", None)
    with pytest.raises(ValueError):
        load_reasoning_parser_plugin(str(tmp_path / "missing.py"))
