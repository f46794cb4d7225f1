"""vLLM-compatible SamplingParams, converted to the C++ struct at submission."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from cserve import _core

# Stop strings are searched in the text after every token: their number and length bound that cost.
MAX_STOP_STRINGS = 128
MAX_STOP_STRING_CHARS = 1024
# logit_bias values are clamped to OpenAI's documented range, so a bias can never overflow a logit.
LOGIT_BIAS_LIMIT = 100.0


def _token_id(value, field_name: str) -> int:
    t = int(value)
    if not -2**31 <= t < 2**31:  # outside int32 cannot be a token; the engine names in-range bad ids
        raise ValueError(f"{field_name} contains out-of-vocab token id {t}")
    return t


@dataclass
class StructuredOutputsParams:
    """vLLM's structured-outputs constraint: exactly one of json (a JSON schema, as text or a
    dict), regex, choice, grammar (EBNF/GBNF or Lark), json_object (any JSON object) and
    structural_tag (xgrammar's structural tag JSON); the options shape the JSON grammar."""

    json: Optional[Union[str, dict, bool]] = None
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None
    json_object: Optional[bool] = None
    structural_tag: Optional[str] = None
    disable_fallback: bool = False
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: Optional[str] = None
    backend: Optional[str] = None  # this request's backend (auto, xgrammar, guidance); None: the server's

    def __post_init__(self) -> None:
        given = self._given()
        if len(given) > 1:
            raise ValueError("You can only use one kind of structured outputs constraint but multiple are "
                             f"specified: {', '.join(given)}")
        if not given:
            raise ValueError("structured outputs need one of json, regex, choice, grammar, json_object or "
                             "structural_tag")

    def _given(self) -> list[str]:
        # json=False is a schema (one nothing satisfies); json_object=False asks for nothing.
        return [name for name in ("json", "regex", "choice", "grammar", "json_object", "structural_tag")
                if getattr(self, name) is not None and not (name == "json_object" and self.json_object is False)]

    def kind(self) -> str:
        """Which constraint this is: json, regex, choice, grammar, json_object or structural_tag."""
        return self._given()[0]


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16
    min_tokens: int = 0
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: Optional[dict[int, float]] = None
    allowed_token_ids: Optional[list[int]] = None
    structured_outputs: Optional[StructuredOutputsParams] = None
    extra_args: dict = field(default_factory=dict)
    # Set by the server or LLM from structured_outputs: the compiled grammar (_core.CompiledGrammar)
    # and the token ids after which it applies (the end of the reasoning).
    compiled_grammar: Any = field(default=None, repr=False, compare=False)
    grammar_start_after: list[int] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop has {len(self.stop)} strings; at most {MAX_STOP_STRINGS} are allowed.")
        longest = max((len(s) for s in self.stop), default=0)
        if longest > MAX_STOP_STRING_CHARS:
            raise ValueError(f"a stop string has {longest} characters; at most {MAX_STOP_STRING_CHARS} are allowed.")
        if self.logprobs is True:
            self.logprobs = 1
        if self.prompt_logprobs is True:
            self.prompt_logprobs = 1

    def to_core(self, max_model_len: int, prompt_len: int) -> _core.SamplingParams:
        p = _core.SamplingParams()
        p.n = self.n
        p.temperature = self.temperature
        p.top_p = self.top_p
        p.top_k = self.top_k if self.top_k is not None else 0
        p.min_p = self.min_p
        p.presence_penalty = self.presence_penalty
        p.frequency_penalty = self.frequency_penalty
        p.repetition_penalty = self.repetition_penalty
        p.seed = self.seed
        # max_tokens None means "up to the context length".
        p.max_tokens = self.max_tokens if self.max_tokens is not None else max(1, max_model_len - prompt_len)
        p.min_tokens = self.min_tokens
        # Duplicates add nothing but work; each list is then bounded by the vocabulary.
        p.stop_token_ids = list(dict.fromkeys(_token_id(t, "stop_token_ids") for t in self.stop_token_ids))
        p.ignore_eos = self.ignore_eos
        p.logprobs = self.logprobs
        p.prompt_logprobs = self.prompt_logprobs
        bias = {}
        for k, v in (self.logit_bias or {}).items():
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"logit_bias for token {k} is not finite")
            bias[_token_id(k, "logit_bias")] = min(LOGIT_BIAS_LIMIT, max(-LOGIT_BIAS_LIMIT, v))
        p.logit_bias = list(bias.items())
        p.allowed_token_ids = list(dict.fromkeys(_token_id(t, "allowed_token_ids") for t in self.allowed_token_ids or []))
        if self.structured_outputs is not None and self.compiled_grammar is None:
            raise ValueError("structured_outputs must be compiled before the request is submitted")
        p.grammar = self.compiled_grammar
        p.grammar_start_after = [_token_id(t, "grammar_start_after") for t in self.grammar_start_after]
        return p
