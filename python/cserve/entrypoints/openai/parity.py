"""What cserve does with each request and response field of vLLM 0.15's /v1/completions and
/v1/chat/completions: the one table that the server's refusals read, that docs/serve.md shows
("Request fields", "Response fields": `python -m cserve.entrypoints.openai.parity`), and that a test
holds to the request models and to the server's answers.

Request statuses: "honoured" (vLLM's semantics), "refused" (a 400 naming the field when
`refuse(value)` holds), "no effect" (accepted; what it does in vLLM is already what happens here),
"not applicable" (accepted; it concerns something cserve does not have), "ignored" (accepted, not
used: the note says what differs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from cserve.entrypoints.openai.errors import APIError

BOTH, COMPLETIONS, CHAT = "both", "completions", "chat"


@dataclass(frozen=True)
class RequestField:
    name: str
    endpoints: str  # BOTH, COMPLETIONS or CHAT
    status: str
    note: str
    refuse: Optional[Callable[[Any], bool]] = None  # refused values (status "refused")
    message: str = ""  # the 400's message (vLLM's own where vLLM refuses too)
    example: Any = None  # a refused value, for the test


# name | endpoints | note, for the fields cserve honours with vLLM's semantics
_HONOURED = """
model                         | both        | a served name (404 `The model `x` does not exist.` otherwise) or omitted
prompt                        | completions | text, token ids, or a list of either; empty: vLLM's 400
messages                      | chat        | rendered with the chat template
frequency_penalty             | both        | [-2, 2]
presence_penalty              | both        | [-2, 2]
repetition_penalty            | both        | > 0
temperature                   | both        | >= 0; 0 is greedy
top_p                         | both        | (0, 1]
top_k                         | both        | 0 or -1: off
min_p                         | both        | [0, 1]
seed                          | both        | int64; out of range: 400 naming seed
n                             | both        | at most --max-num-seqs
logit_bias                    | both        | clamped to [-100, 100]
stop                          | both        | stop strings; stop_reason names the one that matched
stop_token_ids                | both        | stop_reason is the token id
include_stop_str_in_output    | both        |
ignore_eos                    | both        |
min_tokens                    | both        |
max_tokens                    | both        | chat: deprecated alias of max_completion_tokens
max_completion_tokens         | chat        |
stream                        | both        | SSE
stream_options                | both        | include_usage: a final chunk with choices [] and the usage; continuous_usage_stats: usage on every chunk; 400 without stream
logprobs                      | both        | completions: an int (top alternatives); chat: a bool; at most --max-logprobs
top_logprobs                  | chat        | needs logprobs: true
prompt_logprobs               | both        | not with stream (vLLM's 400)
echo                          | both        | completions: the prompt before the text (with max_tokens 0 the prompt alone, with its logprobs); chat: the last message's content
skip_special_tokens           | both        |
request_id                    | both        | the response id (cmpl-/chatcmpl- prefix) when no X-Request-Id header is sent
spaces_between_special_tokens | both        |
add_special_tokens            | both        | completions default true, chat default false
truncate_prompt_tokens        | both        | keep N prompt tokens (-1: max_model_len)
truncation_side               | both        | left (default: the last tokens kept) or right (the first)
allowed_token_ids             | both        |
priority                      | both        | needs --scheduling-policy priority unless 0
cache_salt                    | both        | a prefix-cache namespace; must be a non-empty string
return_token_ids              | both        | prompt_token_ids and token_ids in the response
return_tokens_as_token_ids    | both        | logprob tokens as "token_id:N" (overrides --return-tokens-as-token-ids either way)
response_format               | both        | text, json_object, json_schema, structural_tag
structured_outputs            | both        | json, regex, choice, grammar, json_object, structural_tag
guided_json                   | both        | older vLLM's spelling of structured_outputs.json
guided_regex                  | both        | older vLLM's spelling of structured_outputs.regex
guided_choice                 | both        | older vLLM's spelling of structured_outputs.choice
guided_grammar                | both        | older vLLM's spelling of structured_outputs.grammar
guided_decoding_backend       | both        | older vLLM's per-request backend
guided_whitespace_pattern     | both        | older vLLM's structured_outputs.whitespace_pattern
structural_tag                | both        | older vLLM's structured_outputs.structural_tag
tools                         | chat        | given to the chat template; parsed with --tool-call-parser
tool_choice                   | chat        | none, auto, required, or a named function
parallel_tool_calls           | chat        | false keeps the first call
add_generation_prompt         | chat        |
continue_final_message        | chat        | not with add_generation_prompt: true (vLLM's 400)
include_reasoning             | chat        |
documents                     | chat        | given to the chat template
chat_template                 | chat        | needs --trust-request-chat-template
chat_template_kwargs          | chat        |
reasoning_effort              | chat        | given to the chat template as reasoning_effort (when set)
"""


def _honoured() -> tuple[RequestField, ...]:
    rows = (line.split("|", 2) for line in _HONOURED.strip().splitlines())
    return tuple(RequestField(name.strip(), endpoints.strip(), "honoured", note.strip()) for name, endpoints, note in rows)


REQUEST_FIELDS: tuple[RequestField, ...] = _honoured() + (
    RequestField("user", BOTH, "no effect", "vLLM ignores it too"),
    RequestField("length_penalty", BOTH, "no effect", "used only by beam search, which is refused"),
    RequestField("vllm_xargs", BOTH, "no effect", "read only by custom logits processors; cserve loads none"),
    RequestField("kv_transfer_params", BOTH, "not applicable",
                 "disaggregated prefill needs a KV connector (--kv-transfer-config), which cserve has not"),
    RequestField("mm_processor_kwargs", CHAT, "not applicable", "for multimodal processors; models are text-only"),
    RequestField("use_beam_search", BOTH, "refused", "beam search is not built",
                 lambda v: bool(v), "use_beam_search is not supported: cserve has no beam search.", True),
    RequestField("best_of", COMPLETIONS, "refused", "only best_of equal to n (vLLM 0.15 has no best_of)",
                 None, "best_of is not supported (only best_of equal to n).", 3),
    RequestField("suffix", COMPLETIONS, "refused", "as in vLLM",
                 lambda v: v is not None, "suffix is not currently supported", "x"),
    RequestField("prompt_embeds", COMPLETIONS, "refused", "as vLLM without --enable-prompt-embeds",
                 lambda v: bool(v), "You must set `--enable-prompt-embeds` to input `prompt_embeds`.", "AAAA"),
    RequestField("logits_processors", BOTH, "refused", "as vLLM without --logits-processor-pattern",
                 lambda v: bool(v), "The `logits_processors` argument is not supported by this server. See "
                 "--logits-processor-pattern engine argument for more information.", ["my.Processor"]),
    RequestField("bad_words", CHAT, "refused", "not built yet",
                 lambda v: bool(v), "bad_words is not supported yet.", ["hello"]),
)

FIELDS_BY_NAME = {f.name: f for f in REQUEST_FIELDS}


def check_refused(request, endpoint: str) -> None:
    """A 400 naming the first refused field the request sets to a refused value."""
    given = request.model_fields_set
    for f in REQUEST_FIELDS:
        if f.refuse is None or f.name not in given or f.endpoints not in (BOTH, endpoint):
            continue
        if f.refuse(getattr(request, f.name, None)):
            raise APIError(f.message, 400, f.name)


@dataclass(frozen=True)
class ResponseField:
    name: str
    endpoints: str
    note: str


RESPONSE_FIELDS: tuple[ResponseField, ...] = (
    ResponseField("id, object, created, model", BOTH, "`cmpl-` / `chatcmpl-` ids; X-Request-Id when sent"),
    ResponseField("choices[].index", BOTH, "prompt-major for several prompts"),
    ResponseField("choices[].text", COMPLETIONS, "with the prompt first under echo"),
    ResponseField("choices[].message", CHAT, "role, content, refusal, annotations, audio, function_call "
                  "(null), tool_calls, reasoning, reasoning_content"),
    ResponseField("choices[].delta", CHAT, "streamed: role (first chunk), content, reasoning, "
                  "reasoning_content, tool_calls; only the fields set, as vLLM writes chunks"),
    ResponseField("choices[].finish_reason", BOTH, "stop, length, tool_calls, abort, error"),
    ResponseField("choices[].stop_reason", BOTH, "the stop string or stop_token_ids id that ended the "
                  "choice; null for EOS and length"),
    ResponseField("choices[].logprobs", COMPLETIONS, "tokens, token_logprobs, top_logprobs (the token and "
                  "its `logprobs` alternatives), text_offset; the prompt's tokens first under echo"),
    ResponseField("choices[].logprobs.content[]", CHAT, "token, logprob, bytes, top_logprobs[] (token, "
                  "logprob, bytes)"),
    ResponseField("choices[].prompt_logprobs", COMPLETIONS, "with prompt_logprobs: null, then "
                  "{token id: {logprob, rank, decoded_token}} per position (not streamed)"),
    ResponseField("prompt_logprobs", CHAT, "as above, on the response"),
    ResponseField("choices[].prompt_token_ids", COMPLETIONS, "with return_token_ids (first chunk of a choice "
                  "when streamed)"),
    ResponseField("prompt_token_ids", CHAT, "with return_token_ids (first chunk when streamed)"),
    ResponseField("choices[].token_ids", BOTH, "with return_token_ids (each chunk's new ids when streamed)"),
    ResponseField("usage", BOTH, "prompt_tokens, completion_tokens, total_tokens; streamed only with "
                  "stream_options.include_usage or --enable-force-include-usage, in a last chunk with "
                  "choices []; continuous_usage_stats adds it (that choice's tokens so far) to every chunk"),
    ResponseField("usage.prompt_tokens_details.cached_tokens", BOTH, "with --enable-prompt-tokens-details, "
                  "when some prompt tokens came from the prefix cache"),
    ResponseField("service_tier, system_fingerprint", BOTH, "null, as vLLM (not in streamed chunks)"),
    ResponseField("kv_transfer_params", BOTH, "null: no KV connector"),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The "Request fields" and "Response fields" sections of docs/serve.md."""
    lines = ["## Request fields", "",
             "Every field of vLLM 0.15's `/v1/completions` and `/v1/chat/completions` bodies (generated from",
             "`entrypoints/openai/parity.py`; a test keeps it equal to the request models and to the server).",
             "Refused fields answer 400 with `param` naming them; fields no one knows are accepted and logged.",
             "", "| Field | Endpoints | cserve | Note |", "| --- | --- | --- | --- |"]
    for f in REQUEST_FIELDS:
        lines.append(f"| `{f.name}` | {f.endpoints} | {f.status} | {_cell(f.note)} |")
    lines += ["", "## Response fields", "", "| Field | Endpoints | Note |", "| --- | --- | --- |"]
    for r in RESPONSE_FIELDS:
        lines.append(f"| `{r.name}` | {r.endpoints} | {_cell(r.note)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
