"""Incremental detokenization with stop strings, as vLLM's detokenizer does it: text grows one
token at a time (tokenizers' DecodeStream, so multi-byte characters are never split), stop
strings are searched in the decoded text so they match across token boundaries, and while a
request runs the last len(longest stop)-1 characters are held back so a stop string that is
still forming is never streamed. Streamed deltas therefore add up to the non-streamed text."""

from __future__ import annotations

from typing import Optional, Sequence


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: Sequence[str] = (), include_stop_str_in_output: bool = False,
                 skip_special_tokens: bool = True, min_tokens: int = 0) -> None:
        self._tokenizer = tokenizer
        self._stream = None
        if tokenizer is not None:
            from tokenizers.decoders import DecodeStream

            self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._stop = list(stop)
        self._include_stop = include_stop_str_in_output
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._hold = 0 if include_stop_str_in_output else max(0, self._longest_stop - 1)
        self._min_tokens = min_tokens
        self.text = ""
        self.num_tokens = 0
        self._sent = 0  # characters already handed out by delta()

    def add(self, token_ids: Sequence[int]) -> tuple[int, Optional[str]]:
        """Decodes new tokens. Returns (how many of them were taken, the stop string matched
        or None); tokens after a stop string's token are not taken."""
        for i, tid in enumerate(token_ids):
            self.num_tokens += 1
            if self._stream is None:
                continue
            piece = self._stream.step(self._tokenizer, int(tid))
            if not piece:
                continue
            before = len(self.text)
            self.text += piece
            if self._stop and self.num_tokens > self._min_tokens:
                matched = self._find_stop(before)
                if matched is not None:
                    return i + 1, matched
        return len(token_ids), None

    def _find_stop(self, before: int) -> Optional[str]:
        # Only text that the new piece could complete needs searching.
        start = max(0, before - self._longest_stop + 1)
        best: Optional[tuple[int, str]] = None
        for s in self._stop:
            pos = self.text.find(s, start)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, s)
        if best is None:
            return None
        pos, s = best
        self.text = self.text[: pos + len(s)] if self._include_stop else self.text[:pos]
        self._sent = min(self._sent, len(self.text))
        return s

    def delta(self, finished: bool) -> str:
        """The text not handed out yet; while running, minus the held-back tail."""
        end = len(self.text) if finished else max(self._sent, len(self.text) - self._hold)
        out = self.text[self._sent:end]
        self._sent = end
        return out
