"""Request and response bodies of the OpenAI API with vLLM's extra fields (pydantic v2).

Unknown request fields are accepted and ignored, as vLLM and OpenAI do; the server logs them.
Integer fields carry the bounds of the engine's C++ types, so an out-of-range value is a 400
naming the field (and /openapi.json shows the bounds)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
Int32 = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
# The vocabulary check names bad ids; the served schema narrows "x-token-id" fields to the vocabulary.
TokenId = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX, json_schema_extra={"x-token-id": True})]
# A chat message as the schema shows it (the server takes any object with a string role).
MESSAGE_SCHEMA = {"type": "object", "required": ["role", "content"],
                  "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}


# What the served schema shows of the structured-outputs fields (the server checks them itself,
# naming the field in its 400s).
_JSON_SCHEMA = {"type": "object"}
RESPONSE_FORMAT_PROPERTIES = {
    "type": {"enum": ["text", "json_object", "json_schema", "structural_tag"]},
    "json_schema": {"type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                                   "schema": _JSON_SCHEMA, "strict": {"type": "boolean"}}}}
STRUCTURED_OUTPUTS_PROPERTIES = {
    "json": {"anyOf": [_JSON_SCHEMA, {"type": "string"}]}, "regex": {"type": "string"},
    "choice": {"type": "array", "items": {"type": "string"}}, "grammar": {"type": "string"},
    "json_object": {"type": "boolean"}, "structural_tag": {"anyOf": [{"type": "object"}, {"type": "string"}]},
    "disable_fallback": {"type": "boolean"}, "disable_any_whitespace": {"type": "boolean"},
    "disable_additional_properties": {"type": "boolean"}, "whitespace_pattern": {"type": "string"}}
NAMED_TOOL_CHOICE = {"type": "object", "required": ["function"],
                     "properties": {"type": {"enum": ["function"]},
                                    "function": {"type": "object", "required": ["name"],
                                                 "properties": {"name": {"type": "string"}}}}}


def described(default: Any = None, **bounds: Any) -> Any:
    """A field whose bounds the OpenAPI schema shows but pydantic does not enforce: the engine's
    check refuses values outside them with vLLM's own message."""
    return Field(default, json_schema_extra=bounds)


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIModel):
    include_usage: Optional[bool] = True
    continuous_usage_stats: Optional[bool] = False


class SamplingFields(OpenAIModel):
    """What completions and chat share: OpenAI's sampling fields and vLLM's extras. None means
    "not given": the model's generation_config.json default applies, then vLLM's."""

    model: Optional[str] = None
    frequency_penalty: Optional[float] = described(minimum=-2, maximum=2)
    presence_penalty: Optional[float] = described(minimum=-2, maximum=2)
    logit_bias: Optional[dict[str, float]] = None
    n: int = Field(1, ge=-INT32_MAX - 1, le=INT32_MAX, json_schema_extra={"minimum": 1})  # n < 1: vLLM's message
    seed: Optional[Int64] = None
    stop: Optional[Union[str, list[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = described(minimum=0)
    top_p: Optional[float] = described(exclusiveMinimum=0, maximum=1)
    user: Optional[str] = None
    response_format: Optional[dict[str, Any]] = described(required=["type"], properties=RESPONSE_FORMAT_PROPERTIES)
    # vLLM extras
    top_k: Optional[Int32] = described(minimum=-1)
    min_p: Optional[float] = described(minimum=0, maximum=1)
    repetition_penalty: Optional[float] = described(exclusiveMinimum=0)
    min_tokens: int = Field(0, ge=0, le=INT64_MAX)
    ignore_eos: bool = False
    stop_token_ids: Optional[list[TokenId]] = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    prompt_logprobs: Optional[Int32] = described(minimum=-1)
    return_token_ids: bool = False
    truncate_prompt_tokens: Optional[Int32] = described(minimum=-1)
    priority: Int32 = 0
    allowed_token_ids: Optional[list[TokenId]] = None
    cache_salt: Optional[str] = None
    request_id: Optional[str] = None
    echo: bool = False
    # Structured outputs (entrypoints/openai/structured_outputs.py): vLLM's object, and the
    # top-level fields older vLLM took.
    structured_outputs: Optional[dict[str, Any]] = described(properties=STRUCTURED_OUTPUTS_PROPERTIES)
    guided_json: Optional[Union[str, dict[str, Any]]] = None
    guided_regex: Optional[str] = None
    guided_choice: Optional[list[str]] = None
    guided_grammar: Optional[str] = None
    guided_decoding_backend: Optional[str] = None
    guided_whitespace_pattern: Optional[str] = None
    structural_tag: Optional[str] = None
    # vLLM's extras that cserve refuses or that have no effect here (parity.py says which and why)
    truncation_side: Optional[Literal["left", "right"]] = None
    use_beam_search: bool = False
    length_penalty: float = 1.0
    logits_processors: Optional[list[Union[str, dict[str, Any]]]] = None
    return_tokens_as_token_ids: Optional[bool] = None
    kv_transfer_params: Optional[dict[str, Any]] = None
    vllm_xargs: Optional[dict[str, Any]] = None
    # The StructuredOutputsParams worked out from the fields above (serving.structured_outputs).
    _structured_outputs: Any = PrivateAttr(default=False)


class CompletionRequest(SamplingFields):
    prompt_embeds: Optional[Union[str, list[str]]] = described(enum=[None])  # refused: no --enable-prompt-embeds
    prompt: Optional[Union[str, list[str], list[TokenId], list[list[TokenId]]]] = Field(
        None, validate_default=True, json_schema_extra={"minLength": 1, "minItems": 1})
    best_of: Optional[Annotated[int, Field(ge=1, le=INT32_MAX)]] = None
    logprobs: Optional[Int32] = described(minimum=0)
    max_tokens: Optional[Int64] = described(16, minimum=0)  # 0: only with echo (the prompt alone)
    suffix: Optional[str] = described(enum=[None])  # refused: not supported
    add_special_tokens: bool = True

    @field_validator("prompt")
    @classmethod
    def _prompt_given(cls, value: Any, info: ValidationInfo) -> Any:
        """vLLM's checks (and messages) for a missing or empty prompt."""
        if value in (None, "") and not info.data.get("prompt_embeds"):
            raise PydanticCustomError("prompt", "Either prompt or prompt_embeds must be provided and non-empty.")
        if value == [] or value == [[]]:
            raise PydanticCustomError("prompt", "please provide at least one prompt")
        return value


class ChatCompletionRequest(SamplingFields):
    messages: list[dict[str, Any]] = Field(json_schema_extra={"items": MESSAGE_SCHEMA, "minItems": 1})
    logprobs: bool = False
    top_logprobs: Optional[Int32] = described(0, minimum=0)
    max_tokens: Optional[Int64] = Field(default=None, deprecated="use max_completion_tokens",
                                         json_schema_extra={"minimum": 1})
    max_completion_tokens: Optional[Int64] = described(minimum=1)
    tools: Optional[list[dict[str, Any]]] = None
    # Unset: "auto" with tools, "none" without (vLLM's default); required and named force the calls
    # with structured outputs (entrypoints/openai/tool_choice.py).
    tool_choice: Optional[Union[str, dict[str, Any]]] = described("none", anyOf=[
        {"enum": ["none", "auto", "required"]}, {"type": "null"}, NAMED_TOOL_CHOICE])
    parallel_tool_calls: Optional[bool] = None
    # vLLM extras
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    include_reasoning: bool = True
    documents: Optional[list[dict[str, str]]] = None
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    reasoning_effort: Optional[Literal["low", "medium", "high"]] = None
    bad_words: list[str] = Field(default_factory=list)
    mm_processor_kwargs: Optional[dict[str, Any]] = None


class TokenizeRequest(OpenAIModel):
    """vLLM's TokenizeCompletionRequest (prompt) or TokenizeChatRequest (messages), in one body."""

    model_config = OpenAIModel.model_config | {"json_schema_extra": {"oneOf": [
        {"required": ["prompt"], "properties": {"messages": {"type": "null"}}},
        {"required": ["messages"], "properties": {"prompt": {"type": "null"}}}]}}

    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[dict[str, Any]]] = described(items=MESSAGE_SCHEMA, minItems=1)
    # vLLM's defaults: true for a prompt, false for messages (the chat template adds them).
    add_special_tokens: Optional[bool] = None
    return_token_strs: Optional[bool] = False
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    tools: Optional[list[dict[str, Any]]] = None
    media_io_kwargs: Optional[dict[str, Any]] = None
    mm_processor_kwargs: Optional[dict[str, Any]] = None

    @model_validator(mode="before")
    @classmethod
    def _generation_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("continue_final_message") and data.get("add_generation_prompt"):
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        return data


class DetokenizeRequest(OpenAIModel):
    model: Optional[str] = None
    tokens: list[TokenId]


# Responses


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: Optional[int] = 0
    prompt_tokens_details: Optional[dict[str, int]] = None


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[Optional[float]] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[Optional[dict[str, float]]] = Field(default_factory=list)


class _Body(BaseModel):
    """What every response and chunk starts with; subclasses narrow `object` and `choices` (which
    keep their places)."""
    id: str
    object: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Any]


class _Final(_Body):
    """vLLM's fields of a whole (non-streamed) response after its choices."""
    service_tier: Optional[Literal["auto", "default", "flex", "scale", "priority"]] = None
    system_fingerprint: Optional[str] = None
    usage: UsageInfo


class CompletionStreamChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogProbs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    prompt_token_ids: Optional[list[int]] = None
    token_ids: Optional[list[int]] = None


class CompletionChoice(CompletionStreamChoice):
    prompt_logprobs: Optional[list[Optional[dict[int, dict[str, Any]]]]] = None


class CompletionResponse(_Final):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    kv_transfer_params: Optional[dict[str, Any]] = None  # no KV connector: always null, as vLLM without one


class CompletionStreamResponse(_Body):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionStreamChoice]
    usage: Optional[UsageInfo] = None


class ChatLogProb(BaseModel):
    token: str
    logprob: float = -9999.0
    bytes: Optional[list[int]] = None


class ChatLogProbEntry(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatLogProbs(BaseModel):
    content: Optional[list[ChatLogProbEntry]] = None


class ChatMessage(BaseModel):
    role: str
    content: Optional[str] = None
    refusal: Optional[str] = None
    annotations: Optional[Any] = None
    audio: Optional[Any] = None
    function_call: Optional[dict[str, Any]] = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    # vLLM's field, and the older name many clients still read (vLLM writes both).
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: Optional[ChatLogProbs] = None
    finish_reason: Optional[str] = "stop"
    stop_reason: Optional[Union[int, str]] = None
    token_ids: Optional[list[int]] = None


class ChatCompletionResponse(_Final):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]
    prompt_logprobs: Optional[list[Optional[dict[int, dict[str, Any]]]]] = None
    prompt_token_ids: Optional[list[int]] = None
    kv_transfer_params: Optional[dict[str, Any]] = None


# Streamed chat chunks are written as vLLM writes them: only the fields set (exclude_unset).
class ChatDelta(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatStreamChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: Optional[ChatLogProbs] = None
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    token_ids: Optional[list[int]] = None


class ChatCompletionChunk(_Body):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatStreamChoice]
    usage: Optional[UsageInfo] = None
    prompt_token_ids: Optional[list[int]] = None
