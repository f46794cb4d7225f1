"""Structured outputs in the engine, on a tiny random model whose preferences have nothing to do
with the grammar: every output is valid for every sampling mode, the grammar decides where the
request may end, max_tokens mid-grammar ends with "length", the reasoning gate holds the grammar
back until its marker, and the device-sampling path masks the same tokens as the host sampler."""

from __future__ import annotations

import json
import re

import pytest

from cserve import LLM, SamplingParams, StructuredOutputsParams
from cserve.structured import GrammarError

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "fox"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "pet", "ok"],
    "additionalProperties": False,
}
REGEX = r"[A-Z][a-z]{2,5}-\d{2}"
GRAMMAR = 'root ::= "(" item ("," item)* ")"\nitem ::= [0-9] | "x"'
LARK = 'start: "<" WORD ">"\nWORD: /[a-z]{1,6}/'

MODES = {
    "greedy": dict(temperature=0.0),
    "temperature": dict(temperature=1.3, seed=7),
    "top_k_top_p": dict(temperature=0.9, top_k=5, top_p=0.8, seed=8),
    "min_p": dict(temperature=1.0, min_p=0.2, seed=9),
    "penalties": dict(temperature=0.7, presence_penalty=1.5, frequency_penalty=0.5, repetition_penalty=1.3, seed=10),
}


@pytest.fixture(scope="module")
def llm(chat_model_dir):
    return LLM(chat_model_dir, dtype="float32", num_threads=1, num_gpu_blocks_override=256, max_model_len=512)


def _schema_valid(text: str) -> None:
    import jsonschema

    jsonschema.validate(json.loads(text), SCHEMA)


CASES = [
    ("json", StructuredOutputsParams(json=SCHEMA), _schema_valid),
    ("regex", StructuredOutputsParams(regex=REGEX), lambda t: re.fullmatch(REGEX, t) or pytest.fail(t)),
    ("choice", StructuredOutputsParams(choice=["alpha", "beta", "gamma delta"]),
     lambda t: t in ("alpha", "beta", "gamma delta") or pytest.fail(t)),
    ("ebnf", StructuredOutputsParams(grammar=GRAMMAR),
     lambda t: re.fullmatch(r"\([0-9x](,[0-9x])*\)", t) or pytest.fail(t)),
    ("lark", StructuredOutputsParams(grammar=LARK), lambda t: re.fullmatch(r"<[a-z]{1,6}>", t) or pytest.fail(t)),
    ("json_object", StructuredOutputsParams(json_object=True),
     lambda t: isinstance(json.loads(t), dict) or pytest.fail(t)),
]


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name,so,check", CASES, ids=[c[0] for c in CASES])
def test_every_output_is_valid(llm, mode, name, so, check):
    params = SamplingParams(max_tokens=200, n=2, structured_outputs=so, logprobs=2, **MODES[mode])
    out = llm.generate(["Tell me something:"], params, use_tqdm=False)[0]
    for c in out.outputs:
        if name == "json_object" and c.finish_reason == "length":
            continue  # an open-ended object may outrun max_tokens; the closed grammars may not
        assert c.finish_reason == "stop", (c.text, c.finish_reason)
        check(c.text)
        assert len(c.logprobs) == len(c.token_ids)


def test_bias_against_the_grammar_loses(llm):
    """logit_bias pushing hard towards tokens the grammar forbids cannot make them appear."""
    tok = llm.get_tokenizer()
    banned = [tok.token_to_id(t) for t in ("a", "b", "c", "Ġthe") if tok.token_to_id(t) is not None]
    params = SamplingParams(max_tokens=40, temperature=0.0, logit_bias={t: 100.0 for t in banned},
                            structured_outputs=StructuredOutputsParams(regex=r"[0-9]{4}"))
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert re.fullmatch(r"[0-9]{4}", out.text) and out.finish_reason == "stop"


def test_max_tokens_mid_grammar_ends_with_length(llm):
    params = SamplingParams(max_tokens=3, temperature=0.0, structured_outputs=StructuredOutputsParams(regex="a{20}"))
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3 and set(out.text) <= {"a"}


def test_ignore_eos_still_ends_with_the_grammar(llm):
    """With ignore_eos the stop token the grammar ends on is generated, and the request ends there."""
    params = SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True,
                            structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert out.finish_reason == "stop" and out.text.startswith(("yes", "no"))


def test_grammar_starts_after_the_reasoning_marker(llm):
    """grammar_start_after (the end of the reasoning): tokens before it are free, the grammar
    constrains everything after it. logit_bias makes the marker the first token."""
    tok = llm.get_tokenizer()
    marker = tok.token_to_id("<|im_start|>")
    compiled = llm._grammars.compile(StructuredOutputsParams(regex=r"[0-9]{3}"))
    params = SamplingParams(max_tokens=20, temperature=0.0, logit_bias={marker: 100.0}, skip_special_tokens=False,
                            structured_outputs=StructuredOutputsParams(regex=r"[0-9]{3}"),
                            compiled_grammar=compiled, grammar_start_after=[marker])
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert out.token_ids[0] == marker
    assert re.fullmatch(r"[0-9]{3}", tok.decode(out.token_ids[1:], skip_special_tokens=True)), out.text
    assert out.finish_reason == "stop"


def test_device_sampling_path_masks_like_the_host(chat_model_dir, monkeypatch, llm):
    """The CUDA sampler's processor rows (emulated on the CPU) carry the grammar mask: greedy
    outputs equal the host sampler's."""
    prompts = ["one", "two two", "three three three"]
    cases = [c[1] for c in CASES]
    params = [SamplingParams(max_tokens=60, temperature=0.0, structured_outputs=so) for so in cases]
    host = [o.outputs[0].token_ids for o in llm.generate([prompts[i % 3] for i in range(len(cases))], params,
                                                         use_tqdm=False)]
    monkeypatch.setenv("CSERVE_CPU_EMULATE_DEVICE_SAMPLING", "1")
    emulated = LLM(chat_model_dir, dtype="float32", num_threads=1, num_gpu_blocks_override=256, max_model_len=512)
    dev = [o.outputs[0].token_ids for o in emulated.generate([prompts[i % 3] for i in range(len(cases))], params,
                                                            use_tqdm=False)]
    assert dev == host


@pytest.mark.parametrize("so,fragment", [
    (StructuredOutputsParams(json="{not json"), "not valid JSON"),
    (StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "nonsense"}}}), "schema"),
    (StructuredOutputsParams(regex="a(b"), "regex"),
    (StructuredOutputsParams(grammar="root ::= undefined_rule"), "undefined_rule"),
    (StructuredOutputsParams(choice=[]), "choice"),
    (StructuredOutputsParams(json=False), "false"),
    (StructuredOutputsParams(json=json.loads('{"type": "object", "properties": {"a": ' * 70 + "{}" + "}}" * 70)),
     "nested"),
    # Text the tiny model's ASCII vocabulary cannot spell: a 400 at the request, not a failed step.
    (StructuredOutputsParams(regex="\u00fd"), "no token of this model's vocabulary can start"),
])
def test_bad_constraints_are_named_errors(llm, so, fragment):
    with pytest.raises(GrammarError, match=re.compile(re.escape(fragment), re.I)):
        llm._grammars.compile(so)


def test_compile_time_is_bounded_and_the_worker_recovers(chat_model_dir):
    """A compile past compile_timeout is an error (the worker process is killed); the next
    compile starts a fresh worker and succeeds."""
    from cserve.structured import GrammarService, StructuredOutputsConfig
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(f"{chat_model_dir}/tokenizer.json")
    slow = GrammarService(tok, tok.get_vocab_size(), [2],
                          StructuredOutputsConfig(backend="xgrammar", compile_timeout=1e-4))
    with pytest.raises(GrammarError, match="did not compile within"):
        slow.compile(StructuredOutputsParams(regex=r"[a-z]{1,50}"))
    slow.config.compile_timeout = 60
    assert slow.compile(StructuredOutputsParams(regex=r"[a-z]{1,50}")).vocab_size == tok.get_vocab_size()
    slow.close()


def test_auto_falls_back_to_guidance(chat_model_dir, llm):
    """backend auto: a constraint xgrammar cannot compile in time goes to llguidance, whose
    grammar the engine enforces the same way; disable_fallback keeps the xgrammar error."""
    from cserve.structured import GrammarService, StructuredOutputsConfig

    tok = llm.get_tokenizer()
    service = GrammarService(tok, llm.model_info.vocab_size, [2], StructuredOutputsConfig(compile_timeout=1e-4))
    so = StructuredOutputsParams(regex=r"[a-z]{2,6}!")
    grammar = service.compile(so)
    params = SamplingParams(max_tokens=30, temperature=1.0, seed=3, n=3, structured_outputs=so, compiled_grammar=grammar)
    for c in llm.generate(["x"], params, use_tqdm=False)[0].outputs:
        assert re.fullmatch(r"[a-z]{2,6}!", c.text) and c.finish_reason == "stop", c.text
    with pytest.raises(GrammarError, match="did not compile within"):
        service.compile(StructuredOutputsParams(regex=r"[a-z]{3,7}", disable_fallback=True))
    service.close()


@pytest.mark.parametrize("mode", ["greedy", "temperature", "penalties"])
@pytest.mark.parametrize("name,so,check", CASES[:5], ids=[c[0] for c in CASES[:5]])
def test_guidance_backend_outputs_are_valid(llm, mode, name, so, check):
    """The guidance backend (llguidance, chosen per request) under the same sampling modes."""
    import dataclasses

    so = dataclasses.replace(so, backend="guidance")
    if name == "ebnf":  # llguidance reads Lark; the same language in its syntax
        so = dataclasses.replace(so, grammar='start: "(" item ("," item)* ")"\nitem: /[0-9]/ | "x"')
    params = SamplingParams(max_tokens=200, n=2, structured_outputs=so, **MODES[mode])
    for c in llm.generate(["Tell me something:"], params, use_tqdm=False)[0].outputs:
        assert c.finish_reason == "stop", (c.text, c.finish_reason)
        check(c.text)


def test_the_grammar_waits_for_the_parsers_reasoning_end(llm):
    """With a reasoning parser the grammar starts after its end marker: </think> for the think-tag
    parsers, nothing to wait for when the template turned thinking off, and nothing with
    enable_in_reasoning."""
    from cserve.parsers.reasoning import get_reasoning_parser
    from cserve.structured import GrammarService, StructuredOutputsConfig

    tok = llm.get_tokenizer()
    service = GrammarService(tok, llm.model_info.vocab_size, [2], StructuredOutputsConfig(reasoning_parser="qwen3"))
    qwen3 = get_reasoning_parser("qwen3")
    assert service.start_after(qwen3({})) == tok.encode("</think>", add_special_tokens=False).ids
    assert service.start_after(qwen3({"enable_thinking": False})) == []
    assert service.start_after(get_reasoning_parser("mistral")({})) == tok.encode("[/THINK]", add_special_tokens=False).ids
    assert service.start_after(None) == []
    service.config.enable_in_reasoning = True
    assert service.start_after(qwen3({})) == []
