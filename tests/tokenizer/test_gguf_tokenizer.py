"""Tokenizers built from GGUF metadata give the ids and text transformers gives for the same file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cserve.tokenizer import (
    build_gguf_tokenizer, gguf_chat_template, gguf_special_tokens, load_gguf_chat_template,
)

TEXTS = [
    "",
    "Hello world",
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "tabs\tand\nnew\n\nlines\r\n  indented\n",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(2, 3))",
    "Numbers: 1 12 123 1234 12345 3.14159 -42 1,000,000",
    "It's, I'M, they'll, we'd, you're, he's, I've",
    "ünïcödé naïve café — “quotes” …",
    "日本語のテキストと中文",
    "emoji 😀👍🏽🇫🇷 and ZWJ 👩‍💻",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more text <s> and </s> and <unk>",
    "<think>reasoning</think> <tool> done",
    "<s>Hello</s>world<tool>done<|im_end|>the",
]

CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Say hi."},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Again."},
]

CORPUS = """The quick brown fox jumps over the lazy dog. Hello world, hello there!
It's a test of the tokenizer: numbers like 123 and 4567, code like def f(x): return x * 2.
They'll say we'd rather read the documentation than the code, but the code is the truth.
    Indented lines, tabs\tand newlines\n\n matter for whitespace handling in tokenizers.
"""


def read_gguf_metadata(path: Path) -> dict:
    """The file's metadata as plain Python values, as the C++ runtime hands it to Python."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def write_gguf(path: Path, architecture: str, fields: dict) -> Path:
    """A GGUF with a tokenizer (`fields`: writer method name -> value), the few model keys
    transformers needs for a config, and one tiny tensor so the file is a real model file."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    for method, value in fields.items():
        getattr(writer, method)(value)
    writer.add_tensor("token_embd.weight", np.zeros((len(fields["add_token_list"]), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_reference(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def assert_same_structure(ours, reference) -> None:
    """The same model (vocabulary, merges and their order), normalizer, pre-tokenizer,
    post-processor, decoder and added tokens: equal on every text, not only on TEXTS."""
    import json

    mine, theirs = json.loads(ours.to_str()), json.loads(reference.backend_tokenizer.to_str())
    for added in (mine["added_tokens"], theirs["added_tokens"]):
        added.sort(key=lambda token: token["id"])
    assert mine == theirs


def assert_same_tokenization(ours, reference, texts=TEXTS) -> None:
    for text in texts:
        for add_special_tokens in (True, False):
            ids = reference.encode(text, add_special_tokens=add_special_tokens)
            assert ours.encode(text, add_special_tokens=add_special_tokens).ids == ids, (text, add_special_tokens)
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), (
                    text, skip)


# --- SmolLM2: the real GGUF ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_metadata(smollm2_gguf) -> dict:
    return read_gguf_metadata(smollm2_gguf)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf):
    return load_reference(smollm2_gguf)


def test_smollm2_matches_transformers(smollm2_metadata, smollm2_reference):
    assert smollm2_metadata["tokenizer.ggml.model"] == "gpt2"
    ours = build_gguf_tokenizer(smollm2_metadata)
    assert_same_structure(ours, smollm2_reference)
    assert_same_tokenization(ours, smollm2_reference)


def test_smollm2_builds_quickly(smollm2_metadata):
    import time

    start = time.perf_counter()
    build_gguf_tokenizer(smollm2_metadata)
    assert time.perf_counter() - start < 1.0


def test_smollm2_chat_template_matches_transformers(smollm2_metadata, smollm2_reference):
    reference = smollm2_reference
    assert gguf_chat_template(smollm2_metadata) == reference.chat_template
    assert gguf_special_tokens(smollm2_metadata) == {
        "bos_token": reference.bos_token, "eos_token": reference.eos_token,
        "unk_token": reference.unk_token, "pad_token": reference.pad_token,
    }
    template = load_gguf_chat_template(smollm2_metadata)
    for add_generation_prompt in (True, False):
        assert template.render(CONVERSATION, add_generation_prompt=add_generation_prompt) == \
            reference.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add_generation_prompt)


# --- tiny vocabularies written here ---------------------------------------------------------


def trained_merges(pre_tokenizer, vocab_size: int) -> list[tuple[str, str]]:
    """BPE merges learnt from CORPUS, in rank order (tokenizers' trainer is deterministic)."""
    import json

    from tokenizers import Tokenizer, models, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizer
    initial = pre_tokenizer.alphabet() if hasattr(pre_tokenizer, "alphabet") else []
    tokenizer.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=initial,
                                                                 show_progress=False))
    return [tuple(merge) for merge in json.loads(tokenizer.to_str())["model"]["merges"]]


def sentencepiece_fields(**extra) -> dict:
    """A Llama-2-style vocabulary: <unk> <s> </s>, the 256 byte tokens, pieces scored by merge
    rank (four to a score, so ties must break as transformers breaks them), single characters
    below them, a user-defined and an unused token."""
    from gguf import TokenType
    from tokenizers import pre_tokenizers

    merges = trained_merges(pre_tokenizers.Metaspace(), vocab_size=260)
    pieces = list(dict.fromkeys(left + right for left, right in merges))
    chars = sorted({ch for left, right in merges for ch in left + right} | set("abcdefghijklmnopqrstuvwxyz.,!?"))
    vocab = [("<unk>", TokenType.UNKNOWN, 0.0), ("<s>", TokenType.CONTROL, 0.0), ("</s>", TokenType.CONTROL, 0.0)]
    vocab += [(f"<0x{b:02X}>", TokenType.BYTE, 0.0) for b in range(256)]
    vocab += [(piece, TokenType.NORMAL, -float(rank // 4)) for rank, piece in enumerate(pieces)]
    vocab += [(ch, TokenType.NORMAL, -float(len(pieces) + rank)) for rank, ch in enumerate(chars) if ch not in pieces]
    vocab += [("<tool>", TokenType.USER_DEFINED, 0.0), ("<unused0>", TokenType.UNUSED, 0.0)]
    return {
        "add_tokenizer_model": "llama",
        "add_token_list": [token for token, _, _ in vocab],
        "add_token_types": [kind for _, kind, _ in vocab],
        "add_token_scores": [score for _, _, score in vocab],
        "add_bos_token_id": 1, "add_eos_token_id": 2, "add_unk_token_id": 0,
        "add_add_bos_token": True,
        "add_chat_template": "{% for m in messages %}{{ bos_token }}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}"
                             "{% endfor %}",
        **extra,
    }


def byte_level_fields(pre: str, **extra) -> dict:
    """A GPT-2-style vocabulary: the byte alphabet, merges learnt from CORPUS, control tokens
    (one of them the bos Llama 3 uses) and a user-defined one."""
    from gguf import TokenType
    from tokenizers import pre_tokenizers

    merges = trained_merges(pre_tokenizers.ByteLevel(add_prefix_space=False), vocab_size=400)
    normal = sorted(pre_tokenizers.ByteLevel.alphabet()) + list(dict.fromkeys(left + right for left, right in merges))
    control = ["<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"]
    tokens = control + normal + ["<think>", "</think>"]
    types = [TokenType.CONTROL] * len(control) + [TokenType.NORMAL] * len(normal) + [TokenType.USER_DEFINED] * 2
    return {
        "add_tokenizer_model": "gpt2", "add_tokenizer_pre": pre,
        "add_token_list": tokens, "add_token_types": types,
        "add_token_merges": [f"{left} {right}" for left, right in merges],
        "add_bos_token_id": 1, "add_eos_token_id": 0,
        **extra,
    }


SENTENCEPIECE_CASES = {
    "llama": ("llama", {}),
    "llama_eos_no_bos": ("llama", {"add_add_bos_token": False, "add_add_eos_token": True}),
    "llama_add_space_prefix": ("llama", {"add_add_space_prefix": True}),
    "phi3": ("phi3", {}),
}


@pytest.mark.parametrize("case", SENTENCEPIECE_CASES)
def test_sentencepiece_vocab_matches_transformers(tmp_path, case):
    architecture, extra = SENTENCEPIECE_CASES[case]
    path = write_gguf(tmp_path / "tiny.gguf", architecture, sentencepiece_fields(**extra))
    assert_sentencepiece_file_matches(path, load_reference(path))


def assert_sentencepiece_file_matches(path: Path, reference, texts=TEXTS):
    """The tokenizer and chat template built from the file are transformers' `reference`;
    returns them."""
    metadata = read_gguf_metadata(path)
    ours = build_gguf_tokenizer(metadata)
    # characters the vocabulary lacks (ü, 日, emoji) come out as <0xNN> byte tokens
    assert "<0xC3>" in ours.encode("ü").tokens
    assert_same_structure(ours, reference)
    assert_same_tokenization(ours, reference, texts)
    assert gguf_chat_template(metadata) == reference.chat_template
    template = load_gguf_chat_template(metadata)
    for add_generation_prompt in (True, False):
        assert template.render(CONVERSATION, add_generation_prompt=add_generation_prompt) == \
            reference.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add_generation_prompt)
    return ours, template


def test_sentencepiece_without_space_prefix_adds_none(tmp_path):
    """transformers ignores add_space_prefix = false; llama.cpp and sentencepiece honour it, and so do we."""
    path = write_gguf(tmp_path / "tiny.gguf", "llama", sentencepiece_fields(add_add_space_prefix=False))
    ours = build_gguf_tokenizer(read_gguf_metadata(path))
    assert ours.encode("the fox", add_special_tokens=False).tokens[0] != "▁the"
    assert ours.encode(" the fox", add_special_tokens=False).tokens[0] == "▁the"
    assert ours.decode(ours.encode(" the fox").ids, skip_special_tokens=True) == " the fox"


BYTE_LEVEL_CASES = {
    "gpt2": ("gpt2", {}),
    "llama_bpe": ("llama-bpe", {"add_add_bos_token": True}),
    "qwen2": ("qwen2", {"add_add_eos_token": True}),
}


@pytest.mark.parametrize("case", BYTE_LEVEL_CASES)
def test_byte_level_vocab_matches_transformers(tmp_path, case):
    pre, extra = BYTE_LEVEL_CASES[case]
    path = write_gguf(tmp_path / "tiny.gguf", "llama", byte_level_fields(pre, **extra))
    reference = load_reference(path)
    ours = build_gguf_tokenizer(read_gguf_metadata(path))
    assert_same_structure(ours, reference)
    assert_same_tokenization(ours, reference)


def test_byte_level_pre_tokenizers_differ_on_digits(tmp_path):
    """The splits really are chosen by tokenizer.ggml.pre: GPT-2 keeps a digit run whole, Llama 3
    cuts it in threes, Qwen2 into single digits."""
    pieces = {}
    for pre in ("gpt2", "llama-bpe", "qwen2"):
        metadata = read_gguf_metadata(write_gguf(tmp_path / f"{pre}.gguf", "llama", byte_level_fields(pre)))
        pieces[pre] = build_gguf_tokenizer(metadata).pre_tokenizer.pre_tokenize_str("1234567")
    assert [p for p, _ in pieces["gpt2"]] == ["1234567"]
    assert [p for p, _ in pieces["llama-bpe"]] == ["123", "456", "7"]
    assert [p for p, _ in pieces["qwen2"]] == list("1234567")


def test_control_token_outside_byte_alphabet_keeps_its_id(tmp_path):
    """A DeepSeek-style control token written as plain text is matched whole at its own id
    (transformers respells it as bytes and gives the bos a new id past the vocabulary)."""
    from gguf import TokenType

    fields = byte_level_fields("llama-bpe", add_add_bos_token=True)
    fields["add_token_list"] = ["<｜begin▁of▁sentence｜>", *fields["add_token_list"][1:]]
    fields["add_bos_token_id"] = 0
    fields["add_token_types"][0] = TokenType.CONTROL
    metadata = read_gguf_metadata(write_gguf(tmp_path / "tiny.gguf", "llama", fields))
    ours = build_gguf_tokenizer(metadata)
    assert ours.get_vocab_size() == len(fields["add_token_list"])
    assert ours.encode("<｜begin▁of▁sentence｜>hi", add_special_tokens=False).ids[0] == 0
    assert ours.encode("hi").ids[0] == 0
    assert gguf_special_tokens(metadata)["bos_token"] == "<｜begin▁of▁sentence｜>"


# --- metadata handling ----------------------------------------------------------------------


def test_unknown_tokenizer_model_is_rejected():
    with pytest.raises(ValueError, match="'rwkv'"):
        build_gguf_tokenizer({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(ValueError, match="None"):
        build_gguf_tokenizer({})


def test_missing_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        build_gguf_tokenizer({"tokenizer.ggml.model": "gpt2"})


def test_special_tokens_absent_are_empty():
    metadata = {"tokenizer.ggml.tokens": ["<s>", "a"], "tokenizer.ggml.bos_token_id": 0,
                "tokenizer.ggml.eos_token_id": 7}  # out of range: absent
    assert gguf_special_tokens(metadata) == {"bos_token": "<s>", "eos_token": "", "unk_token": "", "pad_token": ""}
    assert gguf_chat_template(metadata) is None
    assert load_gguf_chat_template(metadata) is None


def test_chat_template_override_wins(tmp_path):
    metadata = {"tokenizer.ggml.tokens": ["<s>"], "tokenizer.ggml.bos_token_id": 0,
                "tokenizer.chat_template": "from the file"}
    assert load_gguf_chat_template(metadata).source == "from the file"
    text = "{{ bos_token }}" + "{{ messages[0]['content'] }}" * 40  # longer than a file name may be
    assert load_gguf_chat_template(metadata, text).render([{"role": "user", "content": "x"}]) == "<s>" + "x" * 40
    path = tmp_path / "template.jinja"
    path.write_text("from a file")
    assert load_gguf_chat_template(metadata, str(path)).source == "from a file"
