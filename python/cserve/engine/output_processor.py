"""The one output processor: it turns one engine request's outputs into per-choice deltas. It
is the only place that applies stop strings (through IncrementalDetokenizer), maps finish and
stop reasons, and tracks the n choices of a request, so the server (streamed or not, HTTP or
gRPC) and the offline LLM cannot disagree, as vLLM V1's OutputProcessor serves both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from cserve.engine.async_engine import EngineRequestError
from cserve.engine.detokenizer import IncrementalDetokenizer


@dataclass
class ChoiceDelta:
    index: int  # choice index in the response
    token_ids: list[int]
    logprobs: list  # _core.PositionLogprobs per token (empty unless logprobs were asked)
    text: str
    finish_reason: Optional[str]
    stop_reason: Any


class ChoiceState:
    def __init__(self, index: int, detok: IncrementalDetokenizer) -> None:
        self.index = index
        self.detok = detok
        self.token_ids: list[int] = []
        self.finish_reason: Optional[str] = None
        self.stop_reason: Any = None


class RequestOutputProcessor:
    """One request's choices. process() takes each engine output in order; `params` is a
    cserve.SamplingParams; choice indices start at `first_index` (a prompt's place in a batch)."""

    def __init__(self, params, tokenizer, first_index: int = 0) -> None:
        self.params = params
        tok = tokenizer if params.detokenize else None
        self.choices = [
            ChoiceState(first_index + i, IncrementalDetokenizer(tok, params.stop, params.include_stop_str_in_output,
                                                                params.skip_special_tokens, params.min_tokens))
            for i in range(params.n)
        ]
        self.prompt_logprobs: Optional[list] = None  # _core.PositionLogprobs of positions 1..len-1
        self.num_cached_tokens = 0
        self.scheduled_time = 0.0  # when the engine first scheduled it (time.monotonic()'s clock); 0: not yet

    @property
    def done(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def process(self, out) -> Optional[ChoiceDelta]:
        """The delta of one engine output, or None for a choice that already ended (a stop
        string ends it before the engine hears). Raises EngineRequestError for a failed request."""
        if out.finish_reason == "error":
            raise EngineRequestError(out.error or "the engine failed")
        if out.has_prompt_logprobs:
            self.prompt_logprobs = list(out.prompt_logprobs)
        self.num_cached_tokens = max(self.num_cached_tokens, out.num_cached_tokens)
        if not self.scheduled_time:
            self.scheduled_time = getattr(out, "scheduled_time", 0.0)
        c = self.choices[out.index]
        if c.finish_reason is not None:
            return None
        new_ids = list(out.new_token_ids)
        # The EOS or stop token that ended the request is an output token, not text (as vLLM,
        # unless include_stop_str_in_output): it matters when special tokens are kept.
        hide_stop = (out.finished and out.stop_token_id >= 0 and bool(new_ids) and new_ids[-1] == out.stop_token_id
                     and not self.params.include_stop_str_in_output)
        taken, stop = c.detok.add(new_ids[:-1] if hide_stop else new_ids)
        if hide_stop and stop is None:
            taken += 1
        ids = new_ids[:taken]
        lps = list(out.new_logprobs[:taken]) if out.new_logprobs else []
        c.token_ids.extend(ids)
        if stop is not None:
            c.finish_reason, c.stop_reason = "stop", stop
        elif out.finished:
            c.finish_reason = out.finish_reason
            if out.stop_token_id >= 0 and out.stop_token_id in (self.params.stop_token_ids or []):
                c.stop_reason = out.stop_token_id
        return ChoiceDelta(c.index, ids, lps, c.detok.delta(c.finish_reason is not None), c.finish_reason,
                           c.stop_reason)
