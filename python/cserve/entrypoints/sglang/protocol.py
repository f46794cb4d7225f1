"""The body of SGLang's POST /generate (GenerateReqInput and its sampling_params), with SGLang's
field names (pydantic v2).

As in SGLang, null means "the default" for every sampling field. Unknown fields are accepted
and ignored (routers add fields of their own); fields that ask for something cserve cannot do
are accepted in the schema only so that a non-default value is refused by name (UNSUPPORTED)."""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict

from cserve.entrypoints.openai.protocol import Int32, Int64, TokenId, described

# SGLang's default max_new_tokens when a request gives none.
DEFAULT_MAX_NEW_TOKENS = 128


class SGLangModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class SGLangSamplingParams(SGLangModel):
    max_new_tokens: Optional[Int64] = described(DEFAULT_MAX_NEW_TOKENS, minimum=1)
    min_new_tokens: Optional[Int64] = described(0, minimum=0)
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[TokenId]] = None
    temperature: Optional[float] = described(minimum=0)
    top_p: Optional[float] = described(exclusiveMinimum=0, maximum=1)
    top_k: Optional[Int32] = described(minimum=-1)
    min_p: Optional[float] = described(minimum=0, maximum=1)
    frequency_penalty: Optional[float] = described(minimum=-2, maximum=2)
    presence_penalty: Optional[float] = described(minimum=-2, maximum=2)
    repetition_penalty: Optional[float] = described(exclusiveMinimum=0)
    n: Optional[Int32] = described(1, minimum=1)
    ignore_eos: Optional[bool] = None
    skip_special_tokens: Optional[bool] = None
    spaces_between_special_tokens: Optional[bool] = None
    no_stop_trim: Optional[bool] = None
    logit_bias: Optional[dict[str, float]] = None
    sampling_seed: Optional[Int64] = None
    stream_interval: Optional[Int32] = None  # accepted; every engine step is streamed
    # Structured outputs, one at a time (SGLang's order when several are given: json_schema,
    # regex, ebnf, then structural_tag): a JSON schema as JSON text ("$$ANY$$": any JSON value),
    # a regex, a GBNF grammar with a root rule, a structural tag as JSON text. cserve also takes
    # the schema and the tag as JSON objects.
    json_schema: Optional[Union[str, dict[str, Any]]] = None
    regex: Optional[str] = None
    ebnf: Optional[str] = None
    structural_tag: Optional[Union[str, dict[str, Any]]] = None
    # Refused when set: custom logit processors and stop regexes are not built yet.
    stop_regex: Optional[Any] = described(enum=[None])
    custom_params: Optional[Any] = described(enum=[None])


UNSUPPORTED_SAMPLING = ("stop_regex", "custom_params")


class GenerateRequest(SGLangModel):
    """Exactly one of text and input_ids; a list of either is a batch."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"oneOf": [
        {"required": ["text"], "properties": {"input_ids": {"type": "null"}, "text": {"minLength": 1, "minItems": 1}}},
        {"required": ["input_ids"], "properties": {"text": {"type": "null"}, "input_ids": {"minItems": 1}}}]})

    text: Optional[Union[str, list[str]]] = None
    input_ids: Optional[Union[list[TokenId], list[list[TokenId]]]] = None
    sampling_params: Optional[Union[SGLangSamplingParams, list[SGLangSamplingParams]]] = None
    rid: Optional[Union[str, list[str]]] = None
    stream: bool = False
    return_logprob: Optional[Union[bool, list[bool]]] = None
    logprob_start_len: Optional[Union[Int32, list[Int32]]] = None
    top_logprobs_num: Optional[Union[Int32, list[Int32]]] = None
    return_text_in_logprobs: bool = False
    priority: Optional[Int32] = None
    extra_key: Optional[Union[str, list[str]]] = None  # a prefix-cache namespace, as cache_salt
    data_parallel_rank: Optional[int] = described(enum=[None, 0])
    # Refused when set (a value other than null, false or empty).
    token_ids_logprob: Optional[Any] = described(enum=[None])
    input_embeds: Optional[Any] = described(enum=[None])
    image_data: Optional[Any] = described(enum=[None])
    video_data: Optional[Any] = described(enum=[None])
    audio_data: Optional[Any] = described(enum=[None])
    lora_path: Optional[Any] = described(enum=[None])
    lora_id: Optional[Any] = described(enum=[None])
    session_params: Optional[Any] = described(enum=[None])
    custom_logit_processor: Optional[Any] = described(enum=[None])
    return_hidden_states: Optional[Any] = described(enum=[None, False])
    bootstrap_host: Optional[Any] = described(enum=[None])
    bootstrap_port: Optional[Any] = described(enum=[None])
    bootstrap_room: Optional[Any] = described(enum=[None])


UNSUPPORTED_REQUEST = {
    "token_ids_logprob": "logprobs of chosen token ids are not supported",
    "input_embeds": "input embeddings are not supported",
    "image_data": "this server serves text-only models",
    "video_data": "this server serves text-only models",
    "audio_data": "this server serves text-only models",
    "lora_path": "LoRA adapters are not supported by /generate",
    "lora_id": "LoRA adapters are not supported by /generate",
    "session_params": "sessions are not supported",
    "custom_logit_processor": "custom logit processors are not supported",
    "return_hidden_states": "hidden states are not returned",
    "bootstrap_host": "prefill/decode disaggregation is not supported",
    "bootstrap_port": "prefill/decode disaggregation is not supported",
    "bootstrap_room": "prefill/decode disaggregation is not supported",
}
