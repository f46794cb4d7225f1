"""A `tokenizers.Tokenizer` and a chat template from a GGUF file's metadata.

A GGUF has no tokenizer.json: the vocabulary, merges, token types and special token ids are
metadata under llama.cpp's key names. We build the tokenizer transformers builds from the same
file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, see its
integrations/gguf/gguf_tokenizer_mapping.py), so a GGUF model gets the ids its HF twin gets.
Where transformers would invent token ids the model does not have, we follow llama.cpp instead;
each such place says so.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path
from typing import Any, Mapping, Optional

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from cserve.tokenizer.chat_template import ChatTemplate
from cserve.tokenizer.gguf_sentencepiece import sentencepiece_bpe, vocabulary_merges


class TokenType(IntEnum):
    """`tokenizer.ggml.token_type` values (llama.cpp's llama_token_type)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# How `tokenizer.ggml.pre` splits text before byte-level BPE, for the names transformers tells
# apart; any other name ("gpt2", "smollm", ...) gets GPT-2's own split.
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
                     "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


def build_gguf_tokenizer(metadata: Mapping[str, Any]) -> Tokenizer:
    """The tokenizer `tokenizer.ggml.*` describes: "gpt2" (byte-level BPE) or "llama"
    (sentencepiece BPE with byte fallback; Gemma's shaped as transformers' GemmaTokenizer).
    ValueError for anything else."""
    model = metadata.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise ValueError(f"unsupported GGUF tokenizer model {model!r} (tokenizer.ggml.model); "
                         "supported: 'gpt2', 'llama'")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
    types = list(metadata.get("tokenizer.ggml.token_type") or ())
    types += [TokenType.NORMAL] * (len(tokens) - len(types))
    special_ids = _special_token_ids(metadata, tokens)

    if model == "gpt2":
        # Tokens matched whole in the text keep the file's spelling, which is their text, not its
        # bytes. (transformers respells them as bytes too when they hold other characters, then
        # gives the named ones new ids past the model's vocabulary.)
        whole = {i for i, kind in enumerate(types) if kind in (TokenType.CONTROL, TokenType.USER_DEFINED)}
        whole.update(special_ids.values())
        spelled = [token if i in whole else _byte_level_spelling(token) for i, token in enumerate(tokens)]
        tokenizer = _byte_level_bpe(metadata, spelled)
    else:
        tokenizer, spelled = sentencepiece_bpe(metadata, list(tokens))
        # A token the vocabulary respells (Gemma's runs of spaces) is a piece BPE reaches, not
        # text matched whole (transformers does not add it either).
        types = [TokenType.NORMAL if new != old else kind for new, old, kind in zip(spelled, tokens, types)]

    _add_whole_tokens(tokenizer, spelled, types, set(special_ids.values()))
    tokenizer.post_processor = _post_processor(metadata, model, spelled, special_ids)
    return tokenizer


def gguf_chat_template(metadata: Mapping[str, Any]) -> Optional[str]:
    template = metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) else None


def gguf_special_tokens(metadata: Mapping[str, Any]) -> dict[str, str]:
    """bos/eos/unk/pad token text for the chat template renderer; "" for those the file lacks."""
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    ids = _special_token_ids(metadata, tokens)
    return {name: tokens[ids[name]] if name in ids else "" for name in SPECIAL_TOKEN_KEYS}


def load_gguf_chat_template(metadata: Mapping[str, Any], override: Optional[str] = None) -> Optional[ChatTemplate]:
    """The file's template, or `override`: a file path or the template text itself. None when there is none."""
    special = gguf_special_tokens(metadata)
    source = _read_override(override) if override is not None else gguf_chat_template(metadata)
    return ChatTemplate(source, special) if source is not None else None


def _read_override(override: str) -> str:
    try:
        path = Path(override)
        return path.read_text() if path.is_file() else override
    except OSError:  # template text too long to be a file name
        return override


def _special_token_ids(metadata: Mapping[str, Any], tokens: list[str]) -> dict[str, int]:
    """name -> id for the special tokens the file names; ids outside the vocabulary count as absent."""
    ids = {name: metadata.get(key) for name, key in SPECIAL_TOKEN_KEYS.items()}
    return {name: i for name, i in ids.items() if isinstance(i, int) and 0 <= i < len(tokens)}


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte: printable latin-1 bytes stand for themselves, the
    rest (controls, space, ...) move to U+0100 onwards in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    moved = iter(range(0x100, 0x200))
    return [chr(b) if b in printable else chr(next(moved)) for b in range(256)]


BYTE_ALPHABET = _byte_alphabet()
_BYTE_ALPHABET_SET = frozenset(BYTE_ALPHABET)


def _byte_level_spelling(token: str) -> str:
    """A token as the byte-level vocabulary spells it; tokens stored as plain text get respelled."""
    if _BYTE_ALPHABET_SET.issuperset(token):
        return token
    return "".join(BYTE_ALPHABET[b] for b in token.encode("utf-8"))


def _byte_level_bpe(metadata: Mapping[str, Any], spelled: list[str]) -> Tokenizer:
    vocab = {token: i for i, token in enumerate(spelled)}
    model = BPE(vocab=vocab, merges=vocabulary_merges(metadata, spelled), dropout=None,
                continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tokenizer = Tokenizer(model)
    split = PRE_TOKENIZER_SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if split is None:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _add_whole_tokens(tokenizer: Tokenizer, spelled: list[str], types: list[int], named: set[int]) -> None:
    """Control tokens and the named special ones (bos, eos, ...) become special added tokens,
    user-defined ones (like `<think>`) plain added tokens: either way the text is matched whole
    and never cut into pieces."""
    special = [AddedToken(spelled[i], special=True, normalized=False)
               for i, kind in enumerate(types) if kind == TokenType.CONTROL or i in named]
    plain = [AddedToken(spelled[i], special=False, normalized=False)
             for i, kind in enumerate(types) if kind == TokenType.USER_DEFINED and i not in named]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(plain)


def _post_processor(metadata: Mapping[str, Any], model: str, spelled: list[str],
                    ids: dict[str, int]) -> processors.TemplateProcessing:
    """bos / eos around each sequence as add_bos_token / add_eos_token say. A sentencepiece file
    that does not say adds bos: llama.cpp does, and so does transformers."""
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", model == "llama")) and "bos_token" in ids
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and "eos_token" in ids
    texts = {name: spelled[i] for name, i in ids.items()}

    def wrap(sequence: str, type_id: int) -> list[str]:
        bos = [f"{texts['bos_token']}:{type_id}"] if add_bos else []
        eos = [f"{texts['eos_token']}:{type_id}"] if add_eos else []
        return [*bos, f"{sequence}:{type_id}", *eos]

    used = [name for name, wanted in (("bos_token", add_bos), ("eos_token", add_eos)) if wanted]
    return processors.TemplateProcessing(single=wrap("$A", 0), pair=wrap("$A", 0) + wrap("$B", 1),
                                         special_tokens=[(texts[name], ids[name]) for name in used])
