"""POST /v1/completions: text or token-id prompts, batched prompts, n, echo, logprobs,
streamed (SSE) or not."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Optional, Union

from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import (CompletionChoice, CompletionLogProbs, CompletionRequest,
                                                CompletionResponse, CompletionStreamChoice, CompletionStreamResponse,
                                                UsageInfo)
from cserve.entrypoints.openai.serving import (RequestRun, ServerState, check_common, check_completion_length,
                                               clean_logprob, compile_grammar, completion_prompt_limit,
                                               prompt_logprobs_json, release_all, run_all, sampling_params,
                                               Streamed, truncate_prompt, usage, vllm_error)


async def _prompts(state: ServerState, request: CompletionRequest) -> list[tuple[Optional[str], list[int]]]:
    p = request.prompt
    if isinstance(p, str):
        items: list[Union[str, list[int]]] = [p]
    elif p and all(isinstance(x, int) for x in p):
        items = [list(p)]
    else:
        items = list(p)
    if not items:
        raise APIError("please provide at least one prompt", 400, "prompt")
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
                   prompt_part: Optional[CompletionLogProbs] = None, as_ids: Optional[bool] = None) -> CompletionLogProbs:
    """OpenAI completion logprobs of `entries` (the token first, then its top alternatives),
    appended to `prompt_part` when given; text offsets count from `offset`. top_logprobs holds, as
    vLLM's, the token then its alternatives, top + 1 entries at most."""
    out = prompt_part if prompt_part is not None else CompletionLogProbs()
    for e in entries:
        token = state.decode_token(int(e.token_ids[0]), as_ids)
        out.tokens.append(token)
        out.token_logprobs.append(clean_logprob(e.logprobs[0]))
        ranked: dict[int, float] = {}
        for tid, lp in zip(e.token_ids, e.logprobs):
            ranked.setdefault(int(tid), lp)
        tops: dict[str, float] = {}
        for tid, lp in list(ranked.items())[:top + 1]:
            tops.setdefault(state.decode_token(tid, as_ids), clean_logprob(lp))
        out.top_logprobs.append(tops)
        out.text_offset.append(offset)
        offset += len(token)
    return out


def _echo_logprobs(state: ServerState, run: RequestRun, top: int, as_ids: Optional[bool]) -> CompletionLogProbs:
    """The prompt's own tokens in the logprobs of an echoed completion: the first has none; the
    engine's prompt logprob entries carry the others (each entry's first token is the prompt's)."""
    first = state.decode_token(run.prompt_ids[0], as_ids)
    out = CompletionLogProbs(text_offset=[0], token_logprobs=[None], tokens=[first], top_logprobs=[None])
    return _logprobs_json(state, run.prompt_logprobs or [], top, len(first), out, as_ids)


def _end_offset(lp: CompletionLogProbs) -> int:
    return lp.text_offset[-1] + len(lp.tokens[-1]) if lp.tokens else 0


async def prepare_completion(state: ServerState, request: CompletionRequest,
                             request_id: str) -> tuple[list[RequestRun], list[str]]:
    """Checks the request and submits one engine request per prompt: (runs, echo texts).
    The gRPC API shares this path."""
    state.check_model(request.model)
    check_common(state, request, "completions")
    if request.best_of is not None and request.best_of != request.n:
        raise APIError("best_of is not supported (only best_of equal to n).", 400, "best_of")
    if request.logprobs is not None and request.logprobs < 0:
        raise vllm_error("`logprobs` must be a positive value.", "logprobs", request.logprobs)
    state.check_capacity()
    room = completion_prompt_limit(state, request)
    prompts = await _prompts(state, request)
    want_prompt_lp = request.prompt_logprobs
    if request.echo and request.logprobs is not None:
        want_prompt_lp = max(want_prompt_lp or 0, request.logprobs)
    # Every prompt is checked before any is submitted, so a bad one refuses the whole batch.
    checked = []
    echo_texts: list[str] = []
    for text, ids in prompts:
        ids = truncate_prompt(state, ids, request)
        max_tokens = check_completion_length(state, request, ids, room)
        if _echo_only(request):
            max_tokens = 1  # vLLM computes one token, then shows the prompt alone
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


def _echo_only(request: CompletionRequest) -> bool:
    """echo with max_tokens 0: vLLM's way to get a prompt's logprobs (scoring) without output."""
    return bool(request.echo) and request.max_tokens == 0


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
            num_generated += len(c.token_ids)  # vLLM counts the hidden token of an echo alone too
            if _echo_only(request):
                c.text, c.token_ids, c.logprobs = "", [], []
            lp = None
            if request.logprobs is not None:
                as_ids = request.return_tokens_as_token_ids
                prompt_part = _echo_logprobs(state, run, request.logprobs, as_ids) if request.echo else None
                offset = _end_offset(prompt_part) if prompt_part is not None else 0
                lp = _logprobs_json(state, c.logprobs, request.logprobs, offset, prompt_part, as_ids)
            out_choices.append(CompletionChoice(
                index=idx, text=echo + c.text, logprobs=lp, finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                prompt_logprobs=prompt_logprobs_json(state, run.prompt_logprobs, run.prompt_ids)
                if run.params.prompt_logprobs is not None else None,  # vLLM: echo's too
                prompt_token_ids=run.prompt_ids if request.return_token_ids else None,
                token_ids=c.token_ids if request.return_token_ids else None))
    prompt_tokens = sum(len(r.prompt_ids) for r in runs)
    cached = runs[-1].num_cached_tokens  # vLLM reports the last prompt's
    resp = CompletionResponse(id=request_id, model=state.model_name, choices=out_choices,
                              usage=UsageInfo(**usage(prompt_tokens, num_generated, cached,
                                                      state.args.enable_prompt_tokens_details)))
    return resp.model_dump(mode="json")


async def _stream(state, request, request_id, runs, echo_texts, disconnected) -> AsyncIterator[str]:
    """vLLM's stream: a chunk per choice delta (the echo with the first), usage per chunk with
    continuous_usage_stats (that choice's tokens so far), a last usage chunk with choices []."""
    created = int(time.time())
    n = request.n
    so = request.stream_options
    include_usage = bool(so.include_usage or state.args.enable_force_include_usage) if so is not None \
        else state.args.enable_force_include_usage
    continuous = include_usage and bool(so is not None and so.continuous_usage_stats)
    as_ids = request.return_tokens_as_token_ids
    text_lens: dict[int, int] = {}
    num_tokens: dict[int, int] = {}
    first_seen: set[int] = set()
    cached: Optional[int] = None

    async for deltas in run_all(state, runs, disconnected):
        for d in deltas:
            run_idx = d.index // n
            run = runs[run_idx]
            if cached is None:
                cached = run.num_cached_tokens  # vLLM: the first output's
            text = d.text
            lp = None
            prompt_ids = None
            echo_part = None
            hidden = _echo_only(request)  # the prompt alone: the computed token is not shown
            if hidden:
                text = ""
            if d.index not in first_seen:
                first_seen.add(d.index)
                if request.echo:
                    text = echo_texts[run_idx] + text
                    if request.logprobs is not None:
                        echo_part = _echo_logprobs(state, run, request.logprobs, as_ids)
                if request.return_token_ids:
                    prompt_ids = run.prompt_ids
            elif not text and not d.token_ids and not num_tokens.get(d.index) and d.finish_reason is None:
                continue
            if request.logprobs is not None:
                start = _end_offset(echo_part) if echo_part is not None else text_lens.get(d.index, 0)
                lp = _logprobs_json(state, [] if hidden else d.logprobs, request.logprobs, start, echo_part, as_ids)
            text_lens[d.index] = text_lens.get(d.index, 0) + (0 if hidden else len(d.text))
            num_tokens[d.index] = num_tokens.get(d.index, 0) + len(d.token_ids)
            shown_ids = [] if hidden else d.token_ids
            choice = CompletionStreamChoice(index=d.index, text=text, logprobs=lp, finish_reason=d.finish_reason,
                                            stop_reason=d.stop_reason, prompt_token_ids=prompt_ids,
                                            token_ids=shown_ids if request.return_token_ids else None)
            u = None
            if continuous:
                u = UsageInfo(**usage(len(run.prompt_ids), num_tokens[d.index], None, False))
            resp = CompletionStreamResponse(id=request_id, created=created, model=state.model_name, choices=[choice],
                                            usage=u)
            yield f"data: {resp.model_dump_json()}\n\n"
    if not all(r.done for r in runs):
        return
    if include_usage:
        prompt_tokens = sum(len(r.prompt_ids) for r in runs)
        u = usage(prompt_tokens, sum(num_tokens.values()), cached, state.args.enable_prompt_tokens_details)
        resp = CompletionStreamResponse(id=request_id, created=created, model=state.model_name, choices=[],
                                        usage=UsageInfo(**u))
        yield f"data: {resp.model_dump_json(exclude_none=True)}\n\n"
    yield "data: [DONE]\n\n"
