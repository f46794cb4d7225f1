"""Stop strings in the offline API: the same detokenizer as the server (the earliest stop
string in the text, only after min_tokens, tokens after the one completing it dropped)."""

from __future__ import annotations

import pytest

from cserve import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(chat_model_dir):
    return LLM(chat_model_dir, dtype="float32", num_threads=2)


PROMPT = "The quick brown fox"


def _free_text(llm) -> str:
    out = llm.generate(PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True), use_tqdm=False)
    return out[0].outputs[0].text


def _first_occurrences(text: str, n: int = 3) -> list[tuple[int, str]]:
    """Substrings of n characters found first where they are taken, in text order."""
    found = []
    for a in range(2, len(text) - n):
        s = text[a:a + n]
        if text.find(s) == a and not s.isspace() and all(a >= b + n for b, _ in found):
            found.append((a, s))
    return found


def test_earliest_stop_string_wins_and_text_is_cut(llm):
    text = _free_text(llm)
    spots = _first_occurrences(text)
    assert len(spots) >= 2, text
    (early_at, early), (_, late) = spots[0], spots[-1]
    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[late, early])
    c = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", early)
    assert c.text == text[:early_at]
    assert len(c.token_ids) < 40
    assert llm.get_tokenizer().decode(c.token_ids).startswith(c.text)

    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[early], include_stop_str_in_output=True)
    assert llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0].text == text[:early_at + len(early)]


def test_min_tokens_defers_stop_strings(llm):
    text = _free_text(llm)
    early_at, early = _first_occurrences(text)[0]
    sp = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[early], min_tokens=40)
    c = llm.generate(PROMPT, sp, use_tqdm=False)[0].outputs[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 40 and c.text == text
