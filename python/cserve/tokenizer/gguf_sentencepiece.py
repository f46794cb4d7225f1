"""SentencePiece BPE vocabularies (`tokenizer.ggml.model` "llama") from GGUF metadata: the
Llama / Phi-3 shape and Gemma's, each as transformers builds it from the same file."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")


def vocabulary_merges(metadata: Mapping[str, Any], tokens: list[str],
                      scores: Optional[Sequence[float]] = None) -> list[tuple[str, str]]:
    """The file's merges, else the merges its scores (or `scores`) rank."""
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is not None:
        return [tuple(merge.split(" ", 1)) for merge in merges]
    if scores is None:
        scores = metadata.get("tokenizer.ggml.scores")
    if scores is None:
        raise ValueError("GGUF metadata has neither tokenizer.ggml.merges nor tokenizer.ggml.scores")
    return merges_from_scores(tokens, scores)


def merges_from_scores(tokens: list[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """Sentencepiece BPE keeps no merge list: a piece's score is its merge rank. Every cut of a
    piece into two known pieces is a merge, best score first; ties break as transformers'
    generate_merges breaks them (longer left piece first, then longer right, then file order)."""
    known = set(tokens)
    ranked = []
    for piece, score in dict(zip(tokens, scores)).items():
        ranked.extend((piece[:k], piece[k:], score) for k in range(1, len(piece))
                      if piece[:k] in known and piece[k:] in known)
    ranked.sort(key=lambda merge: (merge[2], len(merge[0]), len(merge[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def sentencepiece_bpe(metadata: Mapping[str, Any], tokens: list[str]) -> tuple[Tokenizer, list[str]]:
    """The tokenizer, and the vocabulary as it spells each token (Gemma respells some)."""
    architecture = metadata.get("general.architecture")
    if architecture in GEMMA_ARCHITECTURES:
        return _gemma_bpe(metadata, tokens)
    if str(architecture).startswith("gemma"):  # gemma3n, gemma-embedding, ...: no reference to match
        raise ValueError(f"GGUF sentencepiece vocabularies of architecture {architecture!r} are not supported; "
                         f"supported Gemma architectures: {', '.join(GEMMA_ARCHITECTURES)}")
    return _llama_bpe(metadata, tokens), tokens


def _llama_bpe(metadata: Mapping[str, Any], tokens: list[str]) -> Tokenizer:
    architecture = metadata.get("general.architecture")
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=vocabulary_merges(metadata, tokens), fuse_unk=True,
                              byte_fallback=True, dropout=None))
    # transformers always adds the dummy prefix; llama.cpp (and sentencepiece) skip it when the
    # file says add_space_prefix = false, and so do we.
    prefix_space = metadata.get("tokenizer.ggml.add_space_prefix", True) is not False
    if architecture == "phi3":  # the prefix space comes from a normalizer: "  hi" -> "▁▁▁hi"
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")] if prefix_space
            else [normalizers.Replace(" ", "▁")])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if prefix_space else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix_space:
        steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _gemma_bpe(metadata: Mapping[str, Any], tokens: list[str]) -> tuple[Tokenizer, list[str]]:
    """transformers' GemmaTokenizer over the file's vocabulary: spaces become "▁" with no dummy
    prefix, and nothing is split before BPE. Two things differ from the Llama shape:
    - llama.cpp's converter stores the user-defined runs of spaces as real spaces ("  "); the
      vocabulary spells them "▁▁" again, so BPE reaches them from the text's "▁▁".
    - Gemma's scores do not rank its merges (most are equal); the order of the tokens does."""
    if metadata.get("tokenizer.ggml.add_space_prefix", False) is not False:
        raise ValueError("GGUF Gemma vocabularies with tokenizer.ggml.add_space_prefix = true are not supported "
                         "(Gemma's sentencepiece adds no dummy prefix)")
    spelled = ["▁" * len(token) if " " in token and not token.strip() else token for token in tokens]
    merges = vocabulary_merges(metadata, spelled, scores=range(0, -len(spelled), -1))
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = spelled[unk_id] if isinstance(unk_id, int) and 0 <= unk_id < len(spelled) else None
    vocab = {token: i for i, token in enumerate(spelled)}
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True,
                              dropout=None))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    # After the normalizer there is no " " left: the text reaches BPE whole, as in transformers.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tokenizer, spelled
