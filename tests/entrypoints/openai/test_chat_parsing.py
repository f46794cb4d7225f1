"""Reasoning and tool calls in chat responses, through a real server: --reasoning-parser and
--enable-auto-tool-choice --tool-call-parser. The tiny random model is held to a few tokens
(allowed_token_ids) whose text holds the parsers' markers, so its output exercises them; the
expected split is the parser's own on the raw text, and a stream must equal the full response."""

from __future__ import annotations

import json

import httpx
import pytest

from cserve.entrypoints.openai.chat_parsing import ChoiceParsers, merge_tool_calls
from cserve.parsers.reasoning import get_reasoning_parser
from cserve.parsers.tool import get_tool_parser
from tests.helpers.server import ServerProcess, wait_idle

NAME = "tiny"
SEEN: list = []  # (reasoning non-empty, content non-empty) per seed of the test below
MARKERS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def marker_model(tmp_path_factory) -> str:
    """The tiny chat model with the parsers' markers added to its vocabulary."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.helpers.server import build_tokenizer

    path = tmp_path_factory.mktemp("marker_model")
    build_tokenizer(path, 400)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.add_tokens(MARKERS)
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(3)
    config = AutoConfig.for_model("llama", vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=1024, bos_token_id=0, eos_token_id=2)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="module")
def server(marker_model, tmp_path_factory):
    proc = ServerProcess(marker_model, "--served-model-name", NAME, "--max-model-len", "512",
                         "--reasoning-parser", "deepseek_r1", "--enable-auto-tool-choice", "--tool-call-parser",
                         "hermes", log_dir=tmp_path_factory.mktemp("logs"))
    proc.wait_ready()
    yield proc
    proc.stop()


def ids_of(http: httpx.Client, texts: list[str]) -> list[int]:
    out = []
    for t in texts:
        ids = http.post("/tokenize", json={"prompt": t, "add_special_tokens": False}).json()["tokens"]
        assert len(ids) == 1, (t, ids)
        out += ids
    return out


def sse(r: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.mark.parametrize("seed", range(6))
def test_reasoning_and_tools_split_like_the_parsers_and_stream_like_full(server, seed):
    with server.client(timeout=60) as http:
        allowed = ids_of(http, ["</think>", "<tool_call>", "</tool_call>", "Hello", " world"])
        # The random model favours </think>: held back so that reasoning comes first.
        body = {"model": NAME, "messages": [{"role": "user", "content": f"Question {seed}"}], "max_tokens": 24,
                "temperature": 1.0, "seed": seed, "allowed_token_ids": allowed, "tools": TOOLS,
                "return_token_ids": True, "logit_bias": {str(allowed[0]): -2.5}}
        full = http.post("/v1/chat/completions", json=body)
        assert full.status_code == 200, full.text
        choice = full.json()["choices"][0]
        raw = http.post("/detokenize", json={"tokens": choice["token_ids"]}).json()["prompt"]
        # What the parsers make of the raw text is what the server answered.
        parsers = ChoiceParsers(get_reasoning_parser("deepseek_r1"), get_tool_parser("hermes"), TOOLS, {})
        want = parsers.feed(raw, finished=True)
        message = choice["message"]
        SEEN.append((bool(message["reasoning"]), bool(message["content"])))
        assert (message["reasoning"] or "") == want.reasoning and message["reasoning_content"] == message["reasoning"]
        assert (message["content"] or "") == want.content
        assert [c["function"] for c in message["tool_calls"]] == [c["function"] for c in merge_tool_calls(want.tool_calls)]
        assert choice["finish_reason"] == ("tool_calls" if want.tool_calls else "length")
        # The stream says the same.
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = sse(r)
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        assert "".join(d.get("reasoning") or "" for d in deltas) == (message["reasoning"] or "")
        assert "".join(d.get("content") or "" for d in deltas) == (message["content"] or "")
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert finish == [choice["finish_reason"]]
        wait_idle(http)


def test_the_outputs_above_had_reasoning_and_content():
    # Over the seeds, both sides of the split were exercised (not only empty reasoning).
    assert any(r and c for r, c in SEEN), SEEN


def test_well_formed_call_through_the_integration():
    # The server's own glue on a real parser: streamed pieces merge into the full call.
    text = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    parsers = ChoiceParsers(None, get_tool_parser("hermes"), TOOLS, {})
    pieces = [parsers.feed(text[i:i + 3], finished=i + 3 >= len(text)) for i in range(0, len(text), 3)]
    calls = merge_tool_calls([c for p in pieces for c in p.tool_calls])
    assert "".join(p.content for p in pieces) == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"] and parsers.made_calls


def test_gptoss_reasoning_then_tool_parser():
    # --reasoning-parser openai_gptoss --tool-call-parser openai: the reasoning parser takes the
    # analysis and passes the call messages on verbatim; the tool parser makes them calls. The
    # last <|call|> is the stop token, not text. Any split of the output gives the same message.
    import random

    weather = '{"city":"Tōkyō"}'
    nested = '{"query":{"filters":[{"field":"price","op":"<","value":9.5}]},"tags":["ä","🌸"]}'
    text = ("<|channel|>analysis<|message|>Need the weather, then a search.<|end|>"
            "<|start|>assistant<|channel|>commentary<|message|>Checking both — one moment.<|end|>"
            f"<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{weather}"
            "<|call|><|start|>assistant<|channel|>analysis<|message|>And the search.<|end|>"
            f"<|start|>assistant<|channel|>commentary to=functions.search <|constrain|>json<|message|>{nested}")
    tools = TOOLS + [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]

    def parse(chunks):
        parsers = ChoiceParsers(get_reasoning_parser("openai_gptoss"), get_tool_parser("openai"), tools, {})
        pieces = [parsers.feed(c, finished=i == len(chunks) - 1) for i, c in enumerate(chunks)]
        calls = merge_tool_calls([c for p in pieces for c in p.tool_calls])
        assert all(c["id"] for c in calls) and parsers.finish_reason("stop") == "tool_calls"
        return ("".join(p.reasoning for p in pieces), "".join(p.content for p in pieces),
                [(c["function"]["name"], c["function"]["arguments"]) for c in calls])

    want = ("Need the weather, then a search.\nAnd the search.", "Checking both — one moment.",
            [("get_weather", weather), ("search", nested)])
    assert parse([text]) == want
    assert parse(list(text)) == want
    rng = random.Random(0)
    for _ in range(100):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 20)))
        assert parse([text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]) == want
    # a final answer only: content, no calls; a call cut off by max_tokens: content, verbatim
    final = "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>Hi — 東京!"
    parsers = ChoiceParsers(get_reasoning_parser("openai_gptoss"), get_tool_parser("openai"), tools, {})
    out = parsers.feed(final, finished=True)
    assert (out.reasoning, out.content, out.tool_calls) == ("Easy.", "Hi — 東京!", [])
    cut = "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"ci"
    parsers = ChoiceParsers(get_reasoning_parser("openai_gptoss"), get_tool_parser("openai"), tools, {})
    out = parsers.feed("<|channel|>analysis<|message|>Go.<|end|>" + cut, finished=True)
    assert (out.reasoning, out.content, out.tool_calls) == ("Go.", cut, [])
    assert parsers.finish_reason("length") == "length"


def test_auto_tool_choice_needs_the_flags(chat_model_dir, tmp_path):
    proc = ServerProcess(chat_model_dir, "--served-model-name", NAME, "--max-model-len", "256", log_dir=tmp_path)
    with proc:
        proc.wait_ready()
        with proc.client(timeout=60) as http:
            body = {"model": NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "tools": TOOLS}
            r = http.post("/v1/chat/completions", json=body)  # tools without tool_choice mean "auto", as vLLM
            assert r.status_code == 400 and "--enable-auto-tool-choice" in r.json()["error"]["message"]
            assert http.post("/v1/chat/completions", json={**body, "tool_choice": "none"}).status_code == 200
            # required and named need no tool-call parser (structured outputs force the calls); a
            # name that is not a tool is vLLM's 400
            r = http.post("/v1/chat/completions", json={**body, "tool_choice": {"type": "function",
                                                                                "function": {"name": "nope"}}})
            assert r.status_code == 400 and "does not match any" in r.json()["error"]["message"]


def test_unknown_parser_names_stop_the_server(chat_model_dir, tmp_path):
    import subprocess
    import sys

    for flags in (["--reasoning-parser", "nope"], ["--enable-auto-tool-choice", "--tool-call-parser", "nope"]):
        r = subprocess.run([sys.executable, "-m", "cserve.cli.main", "serve", chat_model_dir, *flags],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "nope" in r.stderr, r.stderr
