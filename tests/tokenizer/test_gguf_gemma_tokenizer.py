"""Gemma's sentencepiece vocabularies from GGUF metadata give the ids, text and prompts
transformers' GemmaTokenizer gives for the same file: the real Gemma 3 270M file, and tiny
Gemma-style vocabularies written here."""

from __future__ import annotations

import pytest

from cserve.tokenizer import build_gguf_tokenizer, gguf_chat_template, gguf_special_tokens, load_gguf_chat_template
from tests.helpers.gemma3_270m import CHAT_TEMPLATE
from tests.tokenizer.test_gguf_tokenizer import (
    CONVERSATION, TEXTS, assert_same_structure, assert_same_tokenization, assert_sentencepiece_file_matches,
    load_reference, read_gguf_metadata, trained_merges, write_gguf,
)

GEMMA_TEXTS = TEXTS + [
    " ", "  ", "\n", "\t", "Hello  world", " leading", "   three leading", "trailing ", "trailing   ",
    "a     b\t\tc\n\n\nd \n e", "    def f():\n\treturn 1\n",
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos> <pad><mask><unk> <unused0>",
    "<table><tr><td>cell</td></tr></table> [multimodal]<start_of_image>",
    "Ελληνικά, русский, العربية, हिन्दी, 한국어",
    "rare: 𓀀 \U000e0041 \u0378 \x00\x07",  # most of these only as <0xNN> byte tokens
]


def assert_decodes_back(ours, texts=GEMMA_TEXTS) -> None:
    """No dummy prefix to strip: every text comes back exactly."""
    for text in texts:
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == "<bos>" + text, text


def assert_same_chat_prompt(ours, reference, template) -> None:
    """Our renderer and transformers' give the same prompt, and it encodes to the same ids."""
    for add_generation_prompt in (True, False):
        text = template.render(CONVERSATION, add_generation_prompt=add_generation_prompt)
        assert text == reference.apply_chat_template(CONVERSATION, tokenize=False, chat_template=template.source,
                                                     add_generation_prompt=add_generation_prompt)
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == reference.encode(text, add_special_tokens=False)
        assert ids.count(reference.bos_token_id) == 1, "the template writes <bos> itself"


# --- Gemma 3 270M: the real GGUF -----------------------------------------------------------


@pytest.fixture(scope="module")
def gemma3_metadata(gemma3_270m_gguf) -> dict:
    from cserve import _core  # as the runtime reads it (the gguf package takes ~10 s on 262k tokens)

    return _core.gguf_metadata(str(gemma3_270m_gguf))


@pytest.fixture(scope="module")
def gemma3_reference(gemma3_270m_gguf):
    return load_reference(gemma3_270m_gguf)


@pytest.fixture(scope="module")
def gemma3_ours(gemma3_metadata):
    return build_gguf_tokenizer(gemma3_metadata)


def test_gemma3_matches_transformers(gemma3_metadata, gemma3_ours, gemma3_reference):
    assert gemma3_metadata["general.architecture"] == "gemma3"
    assert gemma3_ours.get_vocab_size() == len(gemma3_metadata["tokenizer.ggml.tokens"]) == 262144
    assert_same_structure(gemma3_ours, gemma3_reference)
    assert_same_tokenization(gemma3_ours, gemma3_reference, GEMMA_TEXTS)
    assert_decodes_back(gemma3_ours)


def test_gemma3_whitespace_and_specials(gemma3_ours):
    encode = gemma3_ours.encode
    assert encode("Hello world").tokens == ["<bos>", "Hello", "▁world"]  # bos, and no dummy prefix
    assert encode(" Hello", add_special_tokens=False).tokens == ["▁Hello"]
    assert encode("a  b", add_special_tokens=False).ids[1] == 138  # the run of two spaces, "▁▁"
    assert encode("x\n\ny", add_special_tokens=False).ids[1] == 108  # "\n\n", matched whole
    turn = encode("<start_of_turn>user\nHi<end_of_turn>", add_special_tokens=False).ids
    assert turn[0] == 105 and turn[-1] == 106
    assert "<0xF0>" in encode("𓀀", add_special_tokens=False).tokens  # byte fallback


def test_gemma3_chat_template_and_special_tokens(gemma3_metadata, gemma3_ours, gemma3_reference):
    # a base model: the file has no template, so the instruction-tuned models' one is given
    assert gguf_chat_template(gemma3_metadata) is None and gemma3_reference.chat_template is None
    assert gguf_special_tokens(gemma3_metadata) == {
        "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>"}
    template = load_gguf_chat_template(gemma3_metadata, CHAT_TEMPLATE)
    assert_same_chat_prompt(gemma3_ours, gemma3_reference, template)
    prompt = template.render(CONVERSATION, add_generation_prompt=True)
    assert prompt.startswith("<bos><start_of_turn>user\nYou are brief.\n\nSay hi.<end_of_turn>\n")
    assert prompt.endswith("<start_of_turn>model\n")


# --- tiny Gemma-style vocabularies written here ---------------------------------------------


def gemma_fields(**extra) -> dict:
    """A vocabulary laid out as llama.cpp writes Gemma's: <pad> <eos> <bos> <unk> <mask> first,
    control and user-defined tokens (runs of newlines, of tabs, and of spaces stored as spaces),
    the 256 byte tokens, then pieces in merge order with scores that say the opposite (Gemma's
    scores do not rank its merges), and Gemma 3's chat template."""
    from gguf import TokenType
    from tokenizers import pre_tokenizers

    merges = trained_merges(pre_tokenizers.Metaspace(prepend_scheme="never"), vocab_size=260)
    pieces = list(dict.fromkeys(left + right for left, right in merges))
    chars = sorted({ch for left, right in merges for ch in left + right} | set("abcdefghijklmnopqrstuvwxyz.,!?▁"))
    control = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<unused0>", "<start_of_turn>", "<end_of_turn>"]
    user_defined = ["[multimodal]", "\n", "\n\n", "  ", "   ", "\t", "\t\t", "<table>", "</table>"]
    vocab = [(token, TokenType.CONTROL, -1000.0) for token in control]
    vocab += [(token, TokenType.USER_DEFINED, -1000.0) for token in user_defined]
    vocab += [(f"<0x{b:02X}>", TokenType.BYTE, 0.0) for b in range(256)]
    pieces = [piece for piece in pieces if piece not in user_defined]
    vocab += [(piece, TokenType.NORMAL, float(rank)) for rank, piece in enumerate(pieces)]
    vocab += [(ch, TokenType.NORMAL, -1.0) for ch in chars if ch not in pieces + user_defined]
    return {
        "add_tokenizer_model": "llama", "add_tokenizer_pre": "default",
        "add_token_list": [token for token, _, _ in vocab],
        "add_token_types": [kind for _, kind, _ in vocab],
        "add_token_scores": [score for _, _, score in vocab],
        "add_bos_token_id": 2, "add_eos_token_id": 1, "add_unk_token_id": 3, "add_pad_token_id": 0,
        "add_add_bos_token": True, "add_add_eos_token": False, "add_add_space_prefix": False,
        "add_chat_template": CHAT_TEMPLATE,
        **extra,
    }


GEMMA_CASES = {
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", {}),
    "gemma3": ("gemma3", {}),
    "gemma3_no_bos": ("gemma3", {"add_add_bos_token": False}),
}


def load_gemma_reference(path):
    """The class AutoTokenizer picks for a Gemma file, named here: transformers reads no model
    config from a gemma (1) GGUF, so AutoTokenizer cannot tell."""
    from transformers import GemmaTokenizer

    return GemmaTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("case", GEMMA_CASES)
def test_gemma_vocab_matches_transformers(tmp_path, case):
    architecture, extra = GEMMA_CASES[case]
    path = write_gguf(tmp_path / "tiny.gguf", architecture, gemma_fields(**extra))
    reference = load_gemma_reference(path)
    ours, template = assert_sentencepiece_file_matches(path, reference, GEMMA_TEXTS)
    assert template.source == CHAT_TEMPLATE
    assert_same_chat_prompt(ours, reference, template)


def test_gemma_merges_follow_token_order_not_scores(tmp_path):
    """The runs of newlines, spaces (stored as "  ", "   ": merged from "▁"s) and tabs merge
    first, as they come first in the file; then the first piece, although its score is the lowest."""
    import json

    from gguf import TokenType

    fields = gemma_fields()
    ours = build_gguf_tokenizer(read_gguf_metadata(write_gguf(tmp_path / "tiny.gguf", "gemma3", fields)))
    merges = json.loads(ours.to_str())["model"]["merges"]
    assert merges[:5] == [["\n", "\n"], ["▁", "▁"], ["▁▁", "▁"], ["▁", "▁▁"], ["\t", "\t"]]
    first_piece = fields["add_token_types"].index(TokenType.NORMAL)
    assert "".join(merges[5]) == fields["add_token_list"][first_piece]
    assert fields["add_token_scores"][first_piece] < fields["add_token_scores"][first_piece + 1]


def test_gemma_without_space_prefix_key_adds_none(tmp_path):
    fields = gemma_fields()
    del fields["add_add_space_prefix"]
    path = write_gguf(tmp_path / "tiny.gguf", "gemma2", fields)
    ours = build_gguf_tokenizer(read_gguf_metadata(path))
    assert not ours.encode("the fox", add_special_tokens=False).tokens[0].startswith("▁")
    assert_same_tokenization(ours, load_gemma_reference(path), GEMMA_TEXTS)


def test_gemma_with_space_prefix_is_refused(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", "gemma3", gemma_fields(add_add_space_prefix=True))
    with pytest.raises(ValueError, match="add_space_prefix"):
        build_gguf_tokenizer(read_gguf_metadata(path))


def test_other_gemma_architectures_are_refused(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", "gemma3n", gemma_fields())
    with pytest.raises(ValueError, match="'gemma3n'.*gemma, gemma2, gemma3"):
        build_gguf_tokenizer(read_gguf_metadata(path))
