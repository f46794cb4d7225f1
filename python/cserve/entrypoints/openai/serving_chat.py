"""POST /v1/chat/completions: messages rendered with the chat template, then generated like a
completion; streamed (SSE) or not."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, AsyncIterator, Optional, Union

from cserve.entrypoints.openai.chat_parsing import (ChatParsing, effective_tool_choice, merge_tool_calls,
                                                    tool_call_json)
from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import (ChatChoice, ChatCompletionChunk, ChatCompletionRequest,
                                                ChatCompletionResponse, ChatDelta, ChatLogProb, ChatLogProbEntry,
                                                ChatLogProbs, ChatMessage, ChatStreamChoice, UsageInfo)
from cserve.entrypoints.openai.serving import (OFF_LOOP_CHARS, RequestRun, ServerState, check_chat_length, check_common,
                                               clean_logprob, compile_grammar, prompt_logprobs_json, run_all,
                                               sampling_params, Streamed, truncate_prompt, usage, vllm_error)
from cserve.entrypoints.openai.tool_choice import check_tool_choice

# A template that walks message content as a list of parts wants the "openai" format.
_OPENAI_FORMAT_HINTS = re.compile(r"for\s+\w+\s+in\s+(message|msg|m)\s*(\[\s*['\"]content['\"]\s*\]|\.content)"
                                  r"|content\s*\[\s*['\"]type['\"]\s*\]|\[\s*['\"]type['\"]\s*\]\s*==")


def content_format(state: ServerState, template) -> str:
    fmt = state.args.chat_template_content_format or "auto"
    if fmt != "auto":
        return fmt
    return "openai" if template is not None and _OPENAI_FORMAT_HINTS.search(template.source) else "string"


def _text_parts(content: list, where: str) -> list[str]:
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise APIError(f"{where}: a content part must be an object.", 400, "messages")
        kind = part.get("type", "text")
        if kind in ("text", "input_text", "output_text", "refusal"):
            texts.append(str(part.get("text", part.get("refusal", ""))))
        else:
            raise APIError(f"{where}: content of type {kind!r} is not supported (the model is text-only).", 400,
                           "messages")
    return texts


def _template_tool_call(call: Any) -> Any:
    """A tool call as chat templates read it: arguments as an object (templates apply tojson or
    iterate over them), as vLLM passes them; arguments that are not JSON stay text."""
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        args = json.loads(fn["arguments"])
    except (ValueError, RecursionError):
        return call
    return {**call, "function": {**fn, "arguments": args}}


def normalize_messages(state: ServerState, messages: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    if not messages:
        raise APIError("messages cannot be empty.", 400, "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(f"messages[{i}] needs a string 'role'.", 400, "messages")
        m = dict(m)
        content = m.get("content")
        if isinstance(content, list):
            texts = _text_parts(content, f"messages[{i}]")
            m["content"] = [{"type": "text", "text": t} for t in texts] if fmt == "openai" else "\n".join(texts)
        elif content is not None and not isinstance(content, str):
            raise APIError(f"messages[{i}].content must be a string or a list of parts.", 400, "messages")
        elif isinstance(content, str) and fmt == "openai":
            m["content"] = [{"type": "text", "text": content}]
        elif content is None:  # an assistant turn that only called tools: no text, as vLLM renders it
            m["content"] = [] if fmt == "openai" else ""
        if isinstance(m.get("tool_calls"), list):
            m["tool_calls"] = [_template_tool_call(c) for c in m["tool_calls"]]
        out.append(m)
    return out


def render_chat(state: ServerState, messages: list, template_override: Optional[str], add_generation_prompt: bool,
                continue_final_message: bool, kwargs: dict[str, Any]) -> str:
    """Renders the conversation (blocking: run it off the loop for long chats)."""
    from jinja2 import TemplateError

    from cserve.tokenizer.chat_template import ChatTemplate, special_tokens_of

    template = state.chat_template
    if template_override is not None:
        if not state.args.trust_request_chat_template:
            raise APIError("Chat template is passed with request, but --trust-request-chat-template is not set. "
                           "Refused request with untrusted chat template.", 400, "chat_template")
        try:  # the template's text: a request never names a file on the server
            template = ChatTemplate(template_override, special_tokens_of(state.tokenizer_config))
        except TemplateError as e:
            raise APIError(f"invalid chat_template: {e}", 400, "chat_template") from None
    if template is None:
        raise APIError("The model has no chat template and none was given (--chat-template): "
                       "use /v1/completions or pass a template.", 400, "messages")
    msgs = normalize_messages(state, messages, content_format(state, template))
    merged = dict(state.args.default_chat_template_kwargs or {})
    merged.update(kwargs)
    try:
        return template.render(msgs, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message, **merged)
    except (TemplateError, ValueError, TypeError) as e:
        raise APIError(f"The chat template failed to render: {e}", 400, "messages") from None


async def render_request(state: ServerState, request: ChatCompletionRequest,
                         check_length: bool = True) -> tuple[str, list[int]]:
    kwargs = dict(request.chat_template_kwargs or {})
    hide_tools = state.args.exclude_tools_when_tool_choice_none and effective_tool_choice(request) == "none"
    if request.tools and not hide_tools:
        kwargs.setdefault("tools", request.tools)
    if request.documents:
        kwargs.setdefault("documents", request.documents)
    if request.reasoning_effort is not None:  # vLLM hands it to the template (it overrides even with None)
        kwargs["reasoning_effort"] = request.reasoning_effort
    size = sum(len(json.dumps(m.get("content"), ensure_ascii=False)) for m in request.messages)
    if request.chat_template is not None or kwargs:
        size = OFF_LOOP_CHARS  # a template (or its arguments) from the request may take long: never on the loop
    text = await state.off_loop(size, render_chat, state, request.messages, request.chat_template,
                                request.add_generation_prompt, request.continue_final_message, kwargs)
    ids = await state.tokenize(text, request.add_special_tokens,
                               check_length and request.truncate_prompt_tokens is None)
    return text, ids


def _chat_logprobs(state: ServerState, entries: list, top: int, as_ids: Optional[bool]) -> ChatLogProbs:
    """vLLM's chat logprobs: each token with its logprob and bytes (of its text, also when written
    as "token_id:N"), and top_logprobs the first `top` of the token then its alternatives."""
    content = []
    for e in entries:
        tid = int(e.token_ids[0])
        text = state.decode_token(tid, False)
        ranked: dict[int, float] = {}
        for t, lp in zip(e.token_ids, e.logprobs):
            ranked.setdefault(int(t), lp)
        tops = []
        for t, lp in list(ranked.items())[:top] if top != -1 else ranked.items():
            token = state.decode_token(t, as_ids)
            tops.append(ChatLogProb(token=token, logprob=clean_logprob(lp),
                                    bytes=list(token.encode("utf-8", errors="replace"))))
        content.append(ChatLogProbEntry(token=state.decode_token(tid, as_ids), logprob=clean_logprob(e.logprobs[0]),
                                        bytes=list(text.encode("utf-8", errors="replace")), top_logprobs=tops))
    return ChatLogProbs(content=content)


async def prepare_chat(state: ServerState, request: ChatCompletionRequest,
                       request_id: str) -> tuple[RequestRun, str, str, Optional[int], ChatParsing]:
    """Checks the request, renders and submits it: (run, response role, echo text, top
    logprobs or None, the reasoning/tool parsing). The gRPC API shares this path."""
    state.check_model(request.model)
    check_common(state, request, "chat")
    if request.continue_final_message and request.add_generation_prompt \
            and "add_generation_prompt" in request.model_fields_set:
        raise APIError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.", 400,
                       "continue_final_message")
    if request.top_logprobs is not None and request.top_logprobs < -1:
        raise vllm_error("`top_logprobs` must be a positive value or -1.", "top_logprobs", request.top_logprobs)
    check_tool_choice(request)
    parsing = ChatParsing(state, request)
    if parsing.needs_special_tokens:
        request.skip_special_tokens = False  # the parsers read markers that are special tokens
    if request.top_logprobs and not request.logprobs:
        raise vllm_error("when using `top_logprobs`, `logprobs` must be set to true.", "top_logprobs")
    state.check_capacity()
    _, ids = await render_request(state, request)
    ids = truncate_prompt(state, ids, request)
    max_tokens = check_chat_length(state, request, ids)
    top = (request.top_logprobs or 0) if request.logprobs else None
    params = sampling_params(state, request, max_tokens, top, request.prompt_logprobs)
    await compile_grammar(state, params, request.chat_template_kwargs)
    role = state.args.response_role if request.add_generation_prompt else request.messages[-1].get("role")
    echo = ""
    if request.echo:
        last = request.messages[-1]
        if last.get("role") == role and isinstance(last.get("content"), str):
            echo = last["content"]
    run = RequestRun(state, request_id, ids, params, 0, request.priority, request.cache_salt or "",
                     streaming=request.stream)
    return run, role, echo, top, parsing


async def create_chat_completion(state: ServerState, request: ChatCompletionRequest, request_id: str,
                                 disconnected: asyncio.Future) -> Union[dict, AsyncIterator[str], None]:
    run, role, echo, top, parsing = await prepare_chat(state, request, request_id)
    if request.stream:
        return Streamed(_stream(state, request, request_id, run, role, echo, top, parsing, disconnected), [run])
    return await _full(state, request, request_id, run, role, echo, top, parsing, disconnected)


async def _full(state, request, request_id, run, role, echo, top, parsing, disconnected) -> Optional[dict]:
    texts = [""] * request.n
    token_ids: list[list[int]] = [[] for _ in range(request.n)]
    logprobs: list[list] = [[] for _ in range(request.n)]
    async for deltas in run_all(state, [run], disconnected):
        for d in deltas:
            texts[d.index] += d.text
            token_ids[d.index].extend(d.token_ids)
            logprobs[d.index].extend(d.logprobs)
    if not run.done:
        return None  # the client went away
    choices = []
    for i, c in enumerate(run.choices):
        message = ChatMessage(role=role, content=echo + texts[i])
        finish_reason = c.finish_reason
        if parsing.active:  # the whole text through the same incremental parsers a stream uses
            parsers = parsing.for_choice()
            parsed = parsers.feed(texts[i], finished=True)
            content = echo + parsed.content
            message.content = content or (None if parsed.tool_calls else content)
            if parsed.reasoning and parsing.include_reasoning:
                message.reasoning = message.reasoning_content = parsed.reasoning
            message.tool_calls = merge_tool_calls(parsed.tool_calls)
            finish_reason = parsers.finish_reason(finish_reason)
        choices.append(ChatChoice(
            index=i, message=message,
            logprobs=_chat_logprobs(state, logprobs[i], top, request.return_tokens_as_token_ids)
            if top is not None else None,
            finish_reason=finish_reason, stop_reason=c.stop_reason,
            token_ids=token_ids[i] if request.return_token_ids else None))
    generated = sum(len(t) for t in token_ids)
    resp = ChatCompletionResponse(
        id=request_id, model=state.model_name, choices=choices,
        usage=UsageInfo(**usage(len(run.prompt_ids), generated, run.num_cached_tokens,
                                state.args.enable_prompt_tokens_details)),
        prompt_logprobs=prompt_logprobs_json(state, run.prompt_logprobs, run.prompt_ids)
        if request.prompt_logprobs is not None else None,
        prompt_token_ids=run.prompt_ids if request.return_token_ids else None)
    return resp.model_dump(mode="json")


async def _stream(state, request, request_id, run, role, echo, top, parsing, disconnected) -> AsyncIterator[str]:
    """vLLM's stream: chunks hold only the fields set (the role chunk, then deltas; usage on each
    with continuous_usage_stats, that choice's tokens so far), then a usage chunk with choices []."""
    created = int(time.time())
    so = request.stream_options
    include_usage = bool(so.include_usage or state.args.enable_force_include_usage) if so is not None \
        else state.args.enable_force_include_usage
    continuous = include_usage and bool(so is not None and so.continuous_usage_stats)
    prompt_tokens = len(run.prompt_ids)
    num_tokens = [0] * request.n
    as_ids = request.return_tokens_as_token_ids

    def chunk(choice: ChatStreamChoice, completion_tokens: int, **extra) -> str:
        resp = ChatCompletionChunk(id=request_id, object="chat.completion.chunk", created=created,
                                   model=state.model_name, choices=[choice], **extra)
        if continuous:
            resp.usage = UsageInfo(**usage(prompt_tokens, completion_tokens, None, False))
        return f"data: {resp.model_dump_json(exclude_unset=True)}\n\n"

    def delta(**fields) -> ChatDelta:
        d = ChatDelta(**fields)
        d.reasoning_content = d.reasoning  # vLLM writes both, reasoning_content always
        return d

    for i in range(request.n):
        first = ChatStreamChoice(index=i, delta=delta(role=role, content=""), logprobs=None, finish_reason=None)
        yield chunk(first, 0, prompt_token_ids=run.prompt_ids if request.return_token_ids else None)
    if echo:
        for i in range(request.n):
            yield chunk(ChatStreamChoice(index=i, delta=delta(content=echo), logprobs=None, finish_reason=None), 0)
    parsers = [parsing.for_choice() for _ in range(request.n)] if parsing.active else None
    async for deltas in run_all(state, [run], disconnected):
        for d in deltas:
            num_tokens[d.index] += len(d.token_ids)
            fields: dict[str, Any] = {"content": d.text}
            finish_reason = d.finish_reason
            if parsers is not None:
                p = parsers[d.index]
                parsed = p.feed(d.text, finished=d.finish_reason is not None)
                fields = {}
                if parsed.content:
                    fields["content"] = parsed.content
                if parsed.reasoning and parsing.include_reasoning:
                    fields["reasoning"] = parsed.reasoning
                if parsed.tool_calls:
                    fields["tool_calls"] = [tool_call_json(c) for c in parsed.tool_calls]
                finish_reason = p.finish_reason(finish_reason)
                if not fields and finish_reason is None and not request.return_token_ids:
                    continue  # the parser holds the text back (vLLM sends nothing)
            elif not d.text and finish_reason is None and not d.token_ids:
                continue
            kw: dict[str, Any] = {"index": d.index, "delta": delta(**fields),
                                  "logprobs": _chat_logprobs(state, d.logprobs, top, as_ids) if top is not None else None,
                                  "finish_reason": finish_reason}
            if finish_reason is not None:
                kw["stop_reason"] = d.stop_reason
            if request.return_token_ids:
                kw["token_ids"] = d.token_ids
            yield chunk(ChatStreamChoice(**kw), num_tokens[d.index])
    if not run.done:
        return
    if include_usage:
        u = usage(prompt_tokens, sum(num_tokens), run.num_cached_tokens, state.args.enable_prompt_tokens_details)
        resp = ChatCompletionChunk(id=request_id, object="chat.completion.chunk", created=created,
                                   model=state.model_name, choices=[], usage=UsageInfo(**u))
        yield f"data: {resp.model_dump_json(exclude_unset=True, exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"
