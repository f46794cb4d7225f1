"""POST /v1/completions: text or token-id prompts, batched prompts, n, echo, logprobs,
streamed (SSE) or not."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Optional, Union

from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import (CompletionChoice, CompletionLogProbs, CompletionRequest,
                                                CompletionResponse, UsageInfo)
from cserve.entrypoints.openai.serving import (RequestRun, ServerState, check_common,
                                               check_prompt_length, clean_logprob, compile_grammar, default_max_tokens,
                                               prompt_logprobs_json, release_all, run_all, sampling_params,
                                               Streamed, truncate_prompt, usage)


async def _prompts(state: ServerState, request: CompletionRequest) -> list[tuple[Optional[str], list[int]]]:
    p = request.prompt
    if isinstance(p, str):
        items: list[Union[str, list[int]]] = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [list(p)]
    else:
        items = list(p)
    if not items:
        raise APIError("prompt cannot be empty.", 400, "prompt")
    if len(items) > state.max_pending:
        raise APIError(f"prompt holds {len(items)} prompts; at most {state.max_pending} are allowed per request.",
                       400, "prompt")
    texts = [item for item in items if isinstance(item, str)]
    encoded = iter(await state.tokenize_many(texts, request.add_special_tokens,
                                             request.truncate_prompt_tokens is None) if texts else [])
    return [(item, next(encoded)) if isinstance(item, str) else (None, [int(t) for t in item]) for item in items]


class _ChoiceText:
    """What a non-streamed choice accumulates."""

    def __init__(self) -> None:
        self.text = ""
        self.token_ids: list[int] = []
        self.logprobs: list = []
        self.finish_reason = None
        self.stop_reason = None


def _logprobs_json(state: ServerState, entries: list, top: int, offset: int,
                   prompt_part: Optional[CompletionLogProbs] = None) -> CompletionLogProbs:
    """OpenAI completion logprobs of `entries` (the token first, then its top alternatives),
    appended to `prompt_part` when given; text offsets count from `offset`."""
    out = prompt_part if prompt_part is not None else CompletionLogProbs()
    for e in entries:
        token = state.decode_token(int(e.token_ids[0]))
        out.tokens.append(token)
        out.token_logprobs.append(clean_logprob(e.logprobs[0]))
        tops: dict[str, float] = {}
        for tid, lp in zip(e.token_ids[1:top + 1], e.logprobs[1:top + 1]):
            tops.setdefault(state.decode_token(int(tid)), clean_logprob(lp))
        tops.setdefault(token, clean_logprob(e.logprobs[0]))
        out.top_logprobs.append(tops)
        out.text_offset.append(offset)
        offset += len(token)
    return out


def _echo_logprobs(state: ServerState, run: RequestRun, top: int) -> CompletionLogProbs:
    """The prompt's own tokens in the logprobs of an echoed completion: the first has none; the
    engine's prompt logprob entries carry the others (each entry's first token is the prompt's)."""
    first = state.decode_token(run.prompt_ids[0])
    out = CompletionLogProbs(text_offset=[0], token_logprobs=[None], tokens=[first], top_logprobs=[None])
    return _logprobs_json(state, run.prompt_logprobs or [], top, len(first), out)


async def prepare_completion(state: ServerState, request: CompletionRequest,
                             request_id: str) -> tuple[list[RequestRun], list[str]]:
    """Checks the request and submits one engine request per prompt: (runs, echo texts).
    The gRPC API shares this path."""
    state.check_model(request.model)
    check_common(state, request)
    if request.suffix is not None:
        raise APIError("suffix is not supported.", 400, "suffix")
    if request.best_of is not None and request.best_of != request.n:
        raise APIError("best_of is not supported (only best_of equal to n).", 400, "best_of")
    state.check_capacity()
    prompts = await _prompts(state, request)
    want_prompt_lp = request.prompt_logprobs
    if request.echo and request.logprobs is not None:
        want_prompt_lp = max(want_prompt_lp or 0, request.logprobs)
    # Every prompt is checked before any is submitted, so a bad one refuses the whole batch.
    checked = []
    echo_texts: list[str] = []
    for text, ids in prompts:
        ids = truncate_prompt(ids, request.truncate_prompt_tokens)
        max_tokens = check_prompt_length(state, len(ids), default_max_tokens(state, request.max_tokens))
        checked.append((ids, sampling_params(state, request, max_tokens, request.logprobs, want_prompt_lp)))
        if request.echo:
            echo_texts.append(text if text is not None else
                              (state.tokenizer.decode(ids, skip_special_tokens=False) if state.tokenizer else ""))
    for _, params in checked:
        await compile_grammar(state, params)  # one compile: the prompts share the constraint (cached)
    runs: list[RequestRun] = []
    try:
        for i, (ids, params) in enumerate(checked):
            runs.append(RequestRun(state, f"{request_id}-{i}", ids, params, i * request.n, request.priority,
                                   request.cache_salt or "", streaming=request.stream))
    except BaseException:
        release_all(runs)  # the engine refused one (a check only it can make): none of them runs
        raise
    return runs, echo_texts


async def create_completion(state: ServerState, request: CompletionRequest, request_id: str,
                            disconnected: asyncio.Future) -> Union[dict, AsyncIterator[str], None]:
    runs, echo_texts = await prepare_completion(state, request, request_id)
    if request.stream:
        return Streamed(_stream(state, request, request_id, runs, echo_texts, disconnected), runs)
    return await _full(state, request, request_id, runs, echo_texts, disconnected)


async def _full(state, request, request_id, runs, echo_texts, disconnected) -> Optional[dict]:
    n = request.n
    choices = {r.choices[0].index + k: _ChoiceText() for r in runs for k in range(n)}
    finished_all = False
    async for deltas in run_all(state, runs, disconnected):
        for d in deltas:
            c = choices[d.index]
            c.text += d.text
            c.token_ids.extend(d.token_ids)
            c.logprobs.extend(d.logprobs)
            c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
        finished_all = all(r.done for r in runs)
    if not finished_all:
        return None  # the client went away
    out_choices = []
    num_generated = 0
    for run_idx, run in enumerate(runs):
        echo = echo_texts[run_idx] if request.echo else ""
        for k in range(n):
            idx = run_idx * n + k
            c = choices[idx]
            num_generated += len(c.token_ids)
            lp = None
            if request.logprobs is not None:
                prompt_part = _echo_logprobs(state, run, request.logprobs) if request.echo else None
                offset = len(echo)
                lp = _logprobs_json(state, c.logprobs, request.logprobs, offset, prompt_part)
            out_choices.append(CompletionChoice(
                index=idx, text=echo + c.text, logprobs=lp, finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                prompt_logprobs=prompt_logprobs_json(state, run.prompt_logprobs, run.prompt_ids)
                if request.prompt_logprobs is not None else None,
                prompt_token_ids=run.prompt_ids if request.return_token_ids else None,
                token_ids=c.token_ids if request.return_token_ids else None))
    prompt_tokens = sum(len(r.prompt_ids) for r in runs)
    cached = sum(r.num_cached_tokens for r in runs)
    resp = CompletionResponse(id=request_id, model=state.model_name, choices=out_choices,
                              usage=UsageInfo(**usage(prompt_tokens, num_generated, cached,
                                                      state.args.enable_prompt_tokens_details)))
    return resp.model_dump(mode="json")


async def _stream(state, request, request_id, runs, echo_texts, disconnected) -> AsyncIterator[str]:
    created = int(time.time())
    n = request.n
    include_usage = state.args.enable_force_include_usage or bool(
        request.stream_options and request.stream_options.include_usage)
    continuous = bool(request.stream_options and request.stream_options.continuous_usage_stats)
    prompt_tokens = sum(len(r.prompt_ids) for r in runs)
    generated = 0
    offsets: dict[int, int] = {}
    first_seen: set[int] = set()

    def chunk(choices: list[CompletionChoice], usage_obj: Optional[dict] = None) -> str:
        resp = CompletionResponse(id=request_id, created=created, model=state.model_name, choices=choices,
                                  usage=UsageInfo(**usage_obj) if usage_obj else None)
        return f"data: {resp.model_dump_json()}\n\n"

    async for deltas in run_all(state, runs, disconnected):
        for d in deltas:
            run_idx = d.index // n
            run = runs[run_idx]
            generated += len(d.token_ids)
            text = d.text
            lp = None
            prompt_lp = None
            prompt_ids = None
            if d.index not in first_seen:
                first_seen.add(d.index)
                if request.echo:
                    text = echo_texts[run_idx] + text
                if request.prompt_logprobs is not None:
                    prompt_lp = prompt_logprobs_json(state, run.prompt_logprobs, run.prompt_ids)
                if request.return_token_ids:
                    prompt_ids = run.prompt_ids
            if request.logprobs is not None:
                start = offsets.get(d.index, 0)
                prompt_part = None
                if request.echo and d.index not in offsets:
                    prompt_part = _echo_logprobs(state, run, request.logprobs)
                    start = len(echo_texts[run_idx])
                lp = _logprobs_json(state, d.logprobs, request.logprobs, start, prompt_part)
                new_tokens = lp.tokens[len(lp.tokens) - len(d.logprobs):]
                offsets[d.index] = start + sum(len(t) for t in new_tokens)
            carries_tokens = d.token_ids and (request.return_token_ids or request.logprobs is not None)
            if not text and d.finish_reason is None and prompt_lp is None and not carries_tokens:
                continue
            choice = CompletionChoice(index=d.index, text=text, logprobs=lp, finish_reason=d.finish_reason,
                                      stop_reason=d.stop_reason, prompt_logprobs=prompt_lp,
                                      prompt_token_ids=prompt_ids,
                                      token_ids=d.token_ids if request.return_token_ids else None)
            u = usage(prompt_tokens, generated, None, False) if include_usage and continuous else None
            yield chunk([choice], u)
    if not all(r.done for r in runs):
        return
    if include_usage:
        cached = sum(r.num_cached_tokens for r in runs)
        yield chunk([], usage(prompt_tokens, generated, cached, state.args.enable_prompt_tokens_details))
    yield "data: [DONE]\n\n"
