"""Structured outputs hold for any vocabulary, not only byte-level BPE. Built here, without
downloads, each with a tiny random Llama:

- byte_fallback: a sentencepiece-style BPE (tokenizers, byte_fallback=True, Llama 2's
  Prepend/Replace normalizer and Replace+ByteFallback+Fuse+Strip decoder, `<0x0A>` byte tokens)
  trained on a corpus without digits, JSON punctuation or non-ASCII letters, so that JSON,
  numbers, "é" and "☕" can only be written with byte tokens;
- padded: the same tokenizer under a model whose vocab_size (lm_head) is larger, the padding
  rows of lm_head scaled up so that they would win every step if the grammar let them;
- gguf: a GGUF file with a sentencepiece ("llama") vocabulary, read by cserve's GGUF tokenizer.

Every output of every sampling mode satisfies its constraint, and every token id is one the
tokenizer has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cserve import LLM, SamplingParams, StructuredOutputsParams
from tests.structured.test_grammar_sampling import MODES, REGEX

# No digits, no JSON punctuation, ASCII letters only.
CORPUS = ("the quick brown fox jumps over the lazy dog and the name of the pet is alpha beta gamma delta "
          "she said that they would rather read the documentation than the code because the code is long ") * 3
SPECIAL = ["<unk>", "<s>", "</s>"]
EOS = 2
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "[A-Za-z é]{1,8}"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "pet": {"enum": ["cat", "dog", "café ☕"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age", "pet", "ok"],
    "additionalProperties": False,
}
CHOICES = ["alpha", "beta", "gamma delta", "café ☕"]
MULTIBYTE = "[é☕ü]{2,4}"


def _schema_valid(text: str) -> None:
    import jsonschema

    jsonschema.validate(json.loads(text), SCHEMA)


def _fullmatch(pattern: str):
    return lambda text: re.fullmatch(pattern, text) or pytest.fail(f"{text!r} does not match {pattern!r}")


# name -> (constraint, check of the text, whether "length" may end the output: JSON with free
# whitespace is unbounded, one byte token per whitespace character)
CASES = {
    "json": (StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True), _schema_valid, False),
    "json_any_whitespace": (StructuredOutputsParams(json=SCHEMA), _schema_valid, True),
    "regex": (StructuredOutputsParams(regex=REGEX), _fullmatch(REGEX), False),
    "multibyte_regex": (StructuredOutputsParams(regex=MULTIBYTE), _fullmatch(MULTIBYTE), False),
    "choice": (StructuredOutputsParams(choice=CHOICES), lambda t: t in CHOICES or pytest.fail(repr(t)), False),
}


def sentencepiece_tokenizer():
    """Llama 2's tokenizer.json shape: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then
    pieces with "▁" for spaces; characters the pieces lack fall back to their UTF-8 bytes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    trainer = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIAL + byte_tokens,
                                                              show_progress=False))
    model = json.loads(trainer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=model["vocab"], merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    assert tok.token_to_id("<0x0A>") == 3 + 0x0A and tok.token_to_id("{") is None and tok.token_to_id("1") is None
    assert "<0xC3>" in tok.encode("é").tokens
    return tok


def random_llama(vocab_size: int, seed: int, scale_rows_from: int = -1):
    """A tiny random Llama (bos 1, eos 2); lm_head rows from `scale_rows_from` on scaled up."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, bos_token_id=1, eos_token_id=EOS,
                                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger than the init's, so that the model has strong, arbitrary preferences
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
        if scale_rows_from >= 0:
            model.lm_head.weight[scale_rows_from:] *= 10
    return model


def hf_model_dir(path: Path, tok, extra_vocab: int, seed: int) -> str:
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True}))
    size = tok.get_vocab_size()
    random_llama(size + extra_vocab, seed, size if extra_vocab else -1).save_pretrained(str(path))
    return str(path)


def gguf_model_file(path: Path) -> str:
    from tests.helpers.gguf_files import write_llama_gguf
    from tests.tokenizer.test_gguf_tokenizer import sentencepiece_fields

    fields = sentencepiece_fields()
    assert fields["add_tokenizer_model"] == "llama" and fields["add_eos_token_id"] == EOS
    write_llama_gguf(random_llama(len(fields["add_token_list"]), 3), path, fields=fields)
    return str(path)


def build(kind: str, root: Path) -> str:
    if kind == "byte_fallback":
        return hf_model_dir(root / kind, sentencepiece_tokenizer(), 0, 1)
    if kind == "padded":
        return hf_model_dir(root / kind, sentencepiece_tokenizer(), 70, 2)
    return gguf_model_file(root / "sentencepiece.gguf")


@pytest.fixture(scope="module", params=["byte_fallback", "padded", "gguf"])
def llm(request, tmp_path_factory):
    path = build(request.param, tmp_path_factory.mktemp("vocab"))
    llm = LLM(path, dtype="float32", num_gpu_blocks_override=128, num_threads=1,
              structured_outputs_config={"backend": "xgrammar"})
    tok = llm.get_tokenizer()
    assert list(llm.model_info.eos_token_ids) == [EOS] and tok.id_to_token(EOS) == "</s>"
    assert tok.id_to_token(3 + 0x7B) == "<0x7B>"
    if request.param == "padded":
        assert llm.model_info.vocab_size == tok.get_vocab_size() + 70
    else:
        assert llm.model_info.vocab_size == tok.get_vocab_size()
    yield llm
    llm._grammars.close()


def check_ids(llm, ids: list[int]) -> None:
    """Every id is a token of the tokenizer: padding ids (past its vocabulary) never come."""
    size = llm.get_tokenizer().get_vocab_size()
    assert all(0 <= t < size for t in ids), ids


@pytest.mark.parametrize("name", CASES)
def test_every_output_is_valid_in_every_sampling_mode(llm, name):
    so, check, may_run_long = CASES[name]
    tok = llm.get_tokenizer()
    params = [SamplingParams(max_tokens=200, n=2, structured_outputs=so, logprobs=1, **MODES[m]) for m in MODES]
    outs = llm.generate([f"Tell me something {i}:" for i in range(len(params))], params, use_tqdm=False)
    used_bytes = False
    for mode, out in zip(MODES, outs):
        for c in out.outputs:
            check_ids(llm, c.token_ids)
            assert len(c.logprobs) == len(c.token_ids)
            used_bytes |= any(tok.id_to_token(t).startswith("<0x") for t in c.token_ids)
            if may_run_long and c.finish_reason == "length":
                continue
            assert c.finish_reason == "stop", (mode, c.text, c.finish_reason)
            assert c.token_ids[-1] == EOS, (mode, c.token_ids)
            check(c.text)
    if name in ("json", "multibyte_regex") and tok.token_to_id("{") is None:
        assert used_bytes  # the vocabulary has no "{", digits or "é": bytes wrote them


def test_logit_bias_towards_padding_and_special_ids_loses(llm):
    """The grammar masks what the tokenizer lacks (ids past its vocabulary), and <unk> and <s>
    where the constraint has no room for their text: a bias of +100 towards all of them changes
    nothing."""
    tok = llm.get_tokenizer()
    size, width = tok.get_vocab_size(), llm.model_info.vocab_size
    bias = {t: 100.0 for t in [0, 1, *range(size, width)]}
    for so, check, _ in (CASES["json"], CASES["regex"], CASES["choice"]):
        params = SamplingParams(max_tokens=200, n=2, temperature=1.0, seed=5, logit_bias=bias, structured_outputs=so)
        for c in llm.generate(["x"], params, use_tqdm=False)[0].outputs:
            check_ids(llm, c.token_ids)
            assert c.finish_reason == "stop" and not {0, 1} & set(c.token_ids), (c.text, c.token_ids)
            check(c.text)


def _control_bias(tok) -> dict[int, float]:
    """+100 on the byte tokens of the control characters JSON whitespace does not use."""
    return {tok.token_to_id(f"<0x{b:02X}>"): 100.0 for b in range(0x20) if b not in (0x09, 0x0A, 0x0D)}


def test_json_strings_never_hold_raw_control_characters(llm):
    """A JSON string escapes control characters: their byte tokens are masked inside one, even
    when the logits want nothing else."""
    so = StructuredOutputsParams(json={"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]},
                                 disable_any_whitespace=True)
    params = SamplingParams(max_tokens=40, temperature=0.0, logit_bias=_control_bias(llm.get_tokenizer()),
                            structured_outputs=so)
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert not re.search(r"[\x00-\x1f]", out.text), out.text
    if out.finish_reason == "stop":
        assert isinstance(json.loads(out.text)["s"], str)


def test_length_bounded_json_strings_never_hold_raw_control_characters(llm):
    """xgrammar 0.2.9 let raw control characters into strings with minLength/maxLength (fixed in
    third_party/xgrammar, marked "cserve:")."""
    so = StructuredOutputsParams(json={"type": "string", "maxLength": 6})
    params = SamplingParams(max_tokens=20, temperature=0.0, logit_bias=_control_bias(llm.get_tokenizer()),
                            structured_outputs=so)
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert not re.search(r"[\x00-\x1f]", out.text), out.text


def test_special_tokens_do_not_count_as_text_in_a_json_string(llm):
    so = StructuredOutputsParams(json={"type": "string", "minLength": 3, "maxLength": 3})
    params = SamplingParams(max_tokens=12, temperature=0.0, logit_bias={1: 100.0}, structured_outputs=so)
    out = llm.generate(["x"], params, use_tqdm=False)[0].outputs[0]
    assert len(json.loads(out.text)) == 3, (out.text, out.token_ids)


def test_a_tokenizer_llguidance_cannot_read_leaves_xgrammar_working():
    """A byte-fallback vocabulary with a bare Metaspace decoder: llguidance refuses it, xgrammar
    still compiles, and asking for the guidance backend is a GrammarError that says why."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from cserve.structured import GrammarError, GrammarService, StructuredOutputsConfig

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "a": 259, "\u2581": 260}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    service = GrammarService(tok, tok.get_vocab_size(), [2], StructuredOutputsConfig(backend="xgrammar"))
    assert service.compile(StructuredOutputsParams(regex="a+")).vocab_size == tok.get_vocab_size()
    with pytest.raises(GrammarError, match="guidance backend is unavailable"):
        service.compile(StructuredOutputsParams(regex="a+", backend="guidance"))
    service.close()
