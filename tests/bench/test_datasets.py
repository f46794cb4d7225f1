"""The benchmark datasets on a real (tiny, trained) tokenizer: random lengths within the range
ratio and exact token counts, sharegpt and custom files, prefix_repetition's shared prefixes."""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

import pytest

from cserve.bench.datasets import (custom_requests, prefix_repetition_requests, random_requests, sample_requests,
                                   sharegpt_requests)
from cserve.bench.serve_args import add_serve_args
from cserve.tokenizer.loading import load_template, load_tokenizer
from tests.helpers.server import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_tokenizer")
    build_tokenizer(path, 400)
    return path


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def count(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    return parser.parse_args(list(argv))


def test_random_lengths_within_the_range_ratio(tok):
    reqs = random_requests(tok, 64, input_len=40, output_len=20, range_ratio=0.5, seed=3)
    assert len(reqs) == 64
    assert all(20 <= r.prompt_len <= 60 and 10 <= r.expected_output_len <= 30 for r in reqs)
    assert len({r.prompt_len for r in reqs}) > 10  # spread, not one length
    assert all(count(tok, r.prompt) == r.prompt_len for r in reqs)  # the text is that many tokens
    fixed = random_requests(tok, 8, input_len=40, output_len=20, seed=3)
    assert {(r.prompt_len, r.expected_output_len) for r in fixed} == {(40, 20)}
    assert [r.prompt for r in random_requests(tok, 8, 40, 20, seed=3)] == [r.prompt for r in fixed]
    assert [r.prompt for r in random_requests(tok, 8, 40, 20, seed=4)] != [r.prompt for r in fixed]
    with pytest.raises(ValueError, match="range-ratio"):
        random_requests(tok, 1, 40, 20, range_ratio=1.0)


def test_random_prefix_is_shared(tok):
    reqs = random_requests(tok, 6, input_len=10, output_len=4, prefix_len=30, seed=0)
    assert all(r.prompt_len == 40 for r in reqs)
    assert count(tok, os.path.commonprefix([r.prompt for r in reqs])) >= 25


def test_prefix_repetition_shares_prefixes(tok):
    reqs = prefix_repetition_requests(tok, 12, prefix_len=24, suffix_len=8, num_prefixes=3, output_len=5, seed=1)
    assert len(reqs) == 12 and all(r.expected_output_len == 5 for r in reqs)
    assert all(r.prompt_len == 32 for r in reqs)
    groups = Counter(r.prompt[:20] for r in reqs)
    assert sorted(groups.values()) == [4, 4, 4]
    for head in groups:
        same = [r.prompt for r in reqs if r.prompt.startswith(head)]
        assert count(tok, os.path.commonprefix(same)) >= 20
    with pytest.raises(ValueError, match="num-prefixes"):
        prefix_repetition_requests(tok, 2, 8, 8, 3, 4)


def write_sharegpt(path):
    turn = [{"from": "human", "value": "The quick brown fox jumps over the lazy dog."},
            {"from": "gpt", "value": "A journey of a thousand miles begins with a single step."}]
    entries = [
        {"id": "a", "conversations": turn},
        {"id": "b", "conversations": [{"from": "human", "value": "To be or not to be, that is the question."},
                                      {"from": "gpt", "value": "Stay hungry, stay foolish."}]},
        {"id": "c", "conversations": turn[:1]},                           # one turn: skipped
        {"id": "d", "conversations": [{"from": "human", "value": "Hi"}, turn[1]]},  # under 4 prompt tokens
    ]
    path.write_text(json.dumps(entries))
    return path


def test_sharegpt(tmp_path, tok):
    path = write_sharegpt(tmp_path / "sharegpt.json")
    reqs = sharegpt_requests(str(path), tok, 2, seed=0)
    assert sorted(r.prompt[:3] for r in reqs) == ["The", "To "]
    for r in reqs:
        assert r.prompt_len == len(tok.encode(r.prompt).ids)
    by_prompt = {r.prompt: r for r in reqs}
    reply = "A journey of a thousand miles begins with a single step."
    assert by_prompt["The quick brown fox jumps over the lazy dog."].expected_output_len == len(tok.encode(reply).ids)
    more = sharegpt_requests(str(path), tok, 5, output_len=7, seed=0)  # oversampled from the two valid pairs
    assert len(more) == 5 and {r.expected_output_len for r in more} == {7} and len({r.prompt for r in more}) == 2
    assert len(sharegpt_requests(str(path), tok, 5, seed=0, oversample=False)) == 2


def test_custom_jsonl_with_and_without_the_chat_template(tmp_path, tok, tokenizer_dir):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ("Hello world!", "Name a colour.", "Why?")) + "\n")
    template = load_template(str(tokenizer_dir))

    def render(prompt):
        return template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)

    reqs = custom_requests(str(path), tok, 3, 11, render, shuffle=False)
    assert [r.prompt for r in reqs] == [render(p) for p in ("Hello world!", "Name a colour.", "Why?")]
    assert reqs[0].prompt.startswith("<|im_start|>user\nHello world!<|im_end|>")
    assert all(r.expected_output_len == 11 and r.prompt_len == len(tok.encode(r.prompt).ids) for r in reqs)
    raw = custom_requests(str(path), tok, 5, 11, None)
    assert len(raw) == 5 and {r.prompt for r in raw} == {"Hello world!", "Name a colour.", "Why?"}
    assert len(custom_requests(str(path), tok, 5, 11, None, oversample=False)) == 3
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="prompt"):
        custom_requests(str(tmp_path / "bad.jsonl"), tok, 1, 4, None)
    with pytest.raises(ValueError, match="jsonl"):
        custom_requests(str(tmp_path / "prompts.json"), tok, 1, 4, None)


def test_sample_requests_reads_the_flags(tmp_path, tok):
    args = serve_args("--dataset-name", "random", "--num-prompts", "5", "--random-input-len", "12",
                      "--random-output-len", "3")
    assert [(r.prompt_len, r.expected_output_len) for r in sample_requests(args, tok)] == [(12, 3)] * 5
    args = serve_args("--dataset-name", "prefix_repetition", "--num-prompts", "4", "--prefix-repetition-prefix-len",
                      "8", "--prefix-repetition-suffix-len", "4", "--prefix-repetition-num-prefixes", "2",
                      "--prefix-repetition-output-len", "6")
    assert [(r.prompt_len, r.expected_output_len) for r in sample_requests(args, tok)] == [(12, 6)] * 4
    path = write_sharegpt(tmp_path / "s.json")
    args = serve_args("--dataset-name", "sharegpt", "--dataset-path", str(path), "--num-prompts", "2",
                      "--sharegpt-output-len", "9")
    assert [r.expected_output_len for r in sample_requests(args, tok)] == [9, 9]
    with pytest.raises(ValueError, match="--dataset-path"):
        sample_requests(serve_args("--dataset-name", "custom"), tok)
