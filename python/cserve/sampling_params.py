"""vLLM-compatible SamplingParams, converted to the C++ struct at submission."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from cserve import _core


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
    extra_args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        if self.stop_token_ids is None:
            self.stop_token_ids = []
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string.")
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
        p.stop_token_ids = list(self.stop_token_ids)
        p.ignore_eos = self.ignore_eos
        p.logprobs = self.logprobs
        p.prompt_logprobs = self.prompt_logprobs
        p.logit_bias = [(int(k), float(v)) for k, v in (self.logit_bias or {}).items()]
        p.allowed_token_ids = list(self.allowed_token_ids or [])
        return p
