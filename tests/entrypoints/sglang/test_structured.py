"""Structured outputs on SGLang's POST /generate, on a real server over the tiny chat model
(random weights: nothing but the grammar makes the outputs valid): sampling_params json_schema
(JSON text, SGLang's "$$ANY$$", or an object), regex, ebnf and structural_tag in every sampling
mode, single and batched, streamed and not; SGLang's one-constraint rule; a constraint that
cannot compile is a 400 before anything runs."""

from __future__ import annotations

import json
import re

import pytest

from tests.entrypoints.sglang.test_generate import events, generate
from tests.helpers.server import wait_idle
from tests.structured.test_grammar_sampling import GRAMMAR as EBNF
from tests.structured.test_grammar_sampling import REGEX, SCHEMA, _schema_valid

PROMPT = "Tell me something:"
TAG = {"type": "structural_tag", "format": {"type": "tag", "begin": "<r>", "end": "</r>",
                                            "content": {"type": "json_schema", "json_schema": SCHEMA}}}


def _tag_valid(text: str) -> None:
    assert text.startswith("<r>") and text.endswith("</r>"), text
    _schema_valid(text[len("<r>"):-len("</r>")])


def _fullmatch(pattern: str):
    return lambda text: re.fullmatch(pattern, text) or pytest.fail(f"{text!r} does not match {pattern!r}")


# name -> (sampling_params constraint, check of the output text)
CONSTRAINTS = {
    "json_schema": ({"json_schema": json.dumps(SCHEMA)}, _schema_valid),
    "json_schema_object": ({"json_schema": SCHEMA}, _schema_valid),
    "any_json": ({"json_schema": "$$ANY$$"}, json.loads),
    "regex": ({"regex": REGEX}, _fullmatch(REGEX)),
    "ebnf": ({"ebnf": EBNF}, _fullmatch(r"\([0-9x](,[0-9x])*\)")),
    "structural_tag": ({"structural_tag": json.dumps(TAG)}, _tag_valid),
}
MODES = {
    "greedy": {"temperature": 0},
    "temperature": {"temperature": 1.3, "sampling_seed": 7},
    "top_k_top_p": {"temperature": 0.9, "top_k": 5, "top_p": 0.8, "sampling_seed": 8},
    "min_p": {"temperature": 1.0, "min_p": 0.2, "sampling_seed": 9},
    "penalties": {"temperature": 0.7, "presence_penalty": 1.5, "frequency_penalty": 0.5,
                  "repetition_penalty": 1.3, "sampling_seed": 10},
}


def check_output(out: dict, name: str, vocab: int) -> None:
    constraint, check = CONSTRAINTS[name]
    meta = out["meta_info"]
    if name == "any_json" and meta["finish_reason"]["type"] == "length":
        return  # any JSON value may outrun max_new_tokens; the bounded constraints may not
    assert meta["finish_reason"]["type"] == "stop", (name, out["text"], meta["finish_reason"])
    check(out["text"])
    assert meta["completion_tokens"] == len(out["output_ids"]) and all(0 <= t < vocab for t in out["output_ids"])


@pytest.fixture(scope="module")
def vocab(chat_model_dir) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(f"{chat_model_dir}/tokenizer.json").get_vocab_size()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", CONSTRAINTS)
def test_every_output_satisfies_its_constraint(http, vocab, mode, name):
    sp = {**CONSTRAINTS[name][0], **MODES[mode], "max_new_tokens": 200, "n": 2}
    outs = generate(http, text=PROMPT, sampling_params=sp)
    assert len(outs) == 2
    for out in outs:
        check_output(out, name, vocab)


def test_a_batch_mixes_constraints_prompt_by_prompt(http, vocab):
    names = ["json_schema", "regex", "ebnf", "structural_tag"]
    texts = [f"{PROMPT} {i}" for i in range(len(names))] + ["free"]
    sps = [{**CONSTRAINTS[n][0], "temperature": 1.0, "sampling_seed": i, "max_new_tokens": 200}
           for i, n in enumerate(names)] + [{"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}]
    outs = generate(http, text=texts, sampling_params=sps, rid=[f"b{i}" for i in range(len(texts))])
    assert [o["meta_info"]["id"] for o in outs] == [f"b{i}" for i in range(len(texts))]
    for name, out in zip(names, outs):
        check_output(out, name, vocab)
    # The unconstrained prompt of the batch is as it is alone.
    alone = generate(http, text="free", sampling_params=sps[-1])
    assert outs[-1]["output_ids"] == alone["output_ids"]
    # One constraint for the whole batch, token-id prompts, n = 2: four valid outputs.
    ids = [http.post("/tokenize", json={"prompt": t}).json()["tokens"] for t in texts[:2]]
    outs = generate(http, input_ids=ids, sampling_params={"regex": REGEX, "n": 2, "temperature": 1.0,
                                                          "sampling_seed": 3, "max_new_tokens": 50})
    assert len(outs) == 4
    for out in outs:
        check_output(out, "regex", vocab)


def test_greedy_is_the_same_streamed_or_not(http, vocab):
    for name in ("json_schema", "regex", "ebnf", "structural_tag"):
        sp = {**CONSTRAINTS[name][0], "temperature": 0, "max_new_tokens": 200}
        full = generate(http, text=PROMPT, sampling_params=sp)
        evs = events(http, text=PROMPT, sampling_params=sp)
        for before, after in zip(evs, evs[1:]):
            assert after["text"].startswith(before["text"]) and before["meta_info"]["finish_reason"] is None
        last = evs[-1]
        assert last["text"] == full["text"] and last["output_ids"] == full["output_ids"]
        check_output(last, name, vocab)


def test_a_streamed_batch_tags_events_and_every_output_is_valid(http, vocab):
    names = ["json_schema", "regex", "ebnf"]
    sps = [{**CONSTRAINTS[n][0], "temperature": 0.8, "sampling_seed": 11, "max_new_tokens": 200, "n": 2}
           for n in names]
    last = {}
    for e in events(http, text=[PROMPT] * len(names), sampling_params=sps):
        last[e["index"]] = e
    assert sorted(last) == list(range(2 * len(names)))
    for i, e in last.items():
        check_output(e, names[i // 2], vocab)


def test_structural_tag_in_its_legacy_form_and_beside_another_constraint(http, vocab):
    # SGLang's older {"structures", "triggers"} form: free text, a JSON object after each trigger.
    legacy = {"structures": [{"begin": "<r>", "schema": SCHEMA, "end": "</r>"}], "triggers": ["<r>"]}
    out = generate(http, text=PROMPT, sampling_params={"structural_tag": json.dumps(legacy), "temperature": 0,
                                                       "max_new_tokens": 30})
    assert out["meta_info"]["completion_tokens"] >= 1
    # As in SGLang, json_schema, regex and ebnf win over a structural_tag given beside them.
    sp = {"regex": REGEX, "structural_tag": json.dumps(TAG), "temperature": 0, "max_new_tokens": 50}
    check_output(generate(http, text=PROMPT, sampling_params=sp), "regex", vocab)


@pytest.mark.parametrize("sp, field, fragment", [
    ({"json_schema": json.dumps(SCHEMA), "regex": REGEX}, "regex", "Only one of regex, json_schema, or ebnf"),
    ({"regex": REGEX, "ebnf": EBNF}, "ebnf", "Only one of regex, json_schema, or ebnf"),
    ({"json_schema": "{not json"}, "json_schema", "Failed to compile json grammar"),
    ({"json_schema": '{"type": "object", "properties": {"a": {"type": "nonsense"}}}'}, "json_schema",
     "Failed to compile json grammar"),
    ({"json_schema": "false"}, "json_schema", "false"),
    ({"json_schema": "[1, 2]"}, "json_schema", "Failed to compile json grammar"),
    ({"regex": "a(b"}, "regex", "Failed to compile regex grammar"),
    ({"regex": ""}, "regex", "Failed to compile regex grammar"),
    ({"ebnf": "root ::= undefined_rule"}, "ebnf", "undefined_rule"),
    ({"ebnf": 'start: "a"'}, "ebnf", "::="),
    ({"ebnf": 'main ::= "a"'}, "ebnf", "Failed to compile ebnf grammar"),
    ({"structural_tag": "{not json"}, "structural_tag", "Failed to compile structural_tag grammar"),
    ({"structural_tag": '{"type": "structural_tag"}'}, "structural_tag", "format"),
    ({"structural_tag": json.dumps({"type": "structural_tag", "format": {"type": "nonsense"}})}, "structural_tag",
     "Failed to compile structural_tag grammar"),
    ({"regex": 5}, "regex", "regex"),
    ({"json_schema": 5}, "json_schema", "json_schema"),
])
def test_bad_constraints_are_400_in_sglangs_error_shape(http, sp, field, fragment):
    r = http.post("/generate", json={"text": PROMPT, "sampling_params": {**sp, "max_new_tokens": 4}})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert fragment in error["message"], error
    assert field in (error["param"] or error["message"]), error


def test_a_bad_constraint_refuses_the_whole_batch_before_anything_runs(http):
    sps = [{"regex": REGEX, "max_new_tokens": 100, "ignore_eos": True}, {"regex": "a(b"}]
    for stream in (False, True):
        r = http.post("/generate", json={"text": [PROMPT, PROMPT], "sampling_params": sps, "stream": stream})
        assert r.status_code == 400 and "Failed to compile regex grammar" in r.json()["error"]["message"]
    wait_idle(http)
    assert http.get("/get_load").json() == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]
