"""POST /generate, SGLang's native generation endpoint: text or token-id prompts (one or a
batch), SGLang's sampling_params names, n, logprobs, streamed (SSE) or not.

Every prompt becomes a RequestRun through the server's own checks (prompt length, capacity,
sampling bounds, the engine's validation), and its outputs come from run_all, so stop strings,
finish reasons, aborts and the release of each request are the OpenAI endpoints' own. What is
SGLang's is the shape: {"text", "output_ids", "meta_info": {"id", "finish_reason": {"type":
"stop"|"length"|"abort", ...}, "prompt_tokens", "completion_tokens", "cached_tokens", ...}} per
output, a list for a batch or n > 1, and a stream whose every event carries the whole text and
output_ids so far (SGLang's default, not deltas), then `data: [DONE]`.

Structured outputs (sampling_params json_schema, regex, ebnf, structural_tag) become a
StructuredOutputsParams compiled by the OpenAI endpoints' compile_grammar before anything is
queued, so a constraint that cannot compile is a 400 and no request of the batch runs."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, AsyncIterator, Optional, Union

from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.serving import (RequestRun, ServerState, Streamed, check_prompt_length,
                                               clean_logprob, compile_grammar, release_all, run_all,
                                               sampling_params)
from cserve.entrypoints.openai.structured_outputs import _structural_tag
from cserve.entrypoints.sglang.protocol import (DEFAULT_MAX_NEW_TOKENS, UNSUPPORTED_REQUEST, UNSUPPORTED_SAMPLING,
                                                GenerateRequest, SGLangSamplingParams)
from cserve.sampling_params import SamplingParams, StructuredOutputsParams

# SGLang's json_schema for "any JSON value" (its builtin JSON grammar), as the schema {} says it.
ANY_JSON = "$$ANY$$"
# The sampling field each constraint kind comes from, and SGLang's name for the kind in its
# "Failed to compile <kind> grammar" errors.
_GRAMMAR_FIELDS = {"json": ("json_schema", "json"), "regex": ("regex", "regex"), "grammar": ("ebnf", "ebnf"),
                   "structural_tag": ("structural_tag", "structural_tag")}


def _per_prompt(value: Any, i: int, name: str, count: int) -> Any:
    """A field given once for all prompts, or as a list with one entry per prompt."""
    if isinstance(value, list):
        if len(value) != count:
            raise APIError(f"{name} has {len(value)} entries for {count} prompts.", 400, name)
        return value[i]
    return value


def _refuse_unsupported(req: GenerateRequest) -> None:
    for name, why in UNSUPPORTED_REQUEST.items():
        value = getattr(req, name)
        if value is not None and value is not False and value != [] and value != {}:
            raise APIError(f"{name} is not supported: {why}.", 400, name)
    if req.data_parallel_rank not in (None, 0):
        raise APIError(f"data_parallel_rank {req.data_parallel_rank} does not exist: this server has one "
                       "data-parallel rank (0).", 400, "data_parallel_rank")


async def _prompts(state: ServerState, req: GenerateRequest) -> tuple[list[list[int]], bool]:
    """The token ids of each prompt, and whether the request was a single prompt."""
    if (req.text is None) == (req.input_ids is None):
        raise APIError("Give exactly one of text and input_ids.", 400, "text")
    if req.text is not None:
        single = isinstance(req.text, str)
        texts = [req.text] if single else list(req.text)
        ids = await state.tokenize_many(texts, True) if texts else []
    else:
        single = not req.input_ids or not isinstance(req.input_ids[0], list)
        ids = [list(req.input_ids)] if single else [list(p) for p in req.input_ids]
    if not ids:
        raise APIError("The batch of prompts is empty.", 400, "text" if req.text is not None else "input_ids")
    if len(ids) > state.max_pending:
        raise APIError(f"The request holds {len(ids)} prompts; at most {state.max_pending} are allowed.", 400)
    return ids, single


def _sampling(state: ServerState, sp: SGLangSamplingParams, prompt_len: int, logprobs: Optional[int]):
    """cserve SamplingParams from SGLang's sampling_params (null means the default, as in SGLang;
    the model's generation_config.json defaults apply before the engine's)."""
    for name in UNSUPPORTED_SAMPLING:
        if getattr(sp, name) is not None:
            raise APIError(f"sampling_params.{name} is not supported yet (stop regexes and custom logit "
                           "processors are not built).", 400, f"sampling_params.{name}")
    if sp.max_new_tokens is not None and sp.max_new_tokens < 1:
        raise APIError(f"sampling_params.max_new_tokens must be at least 1, got {sp.max_new_tokens}.", 400,
                       "sampling_params.max_new_tokens")
    if "max_new_tokens" in sp.model_fields_set:
        # Given (null: up to the context): the request must fit, as SGLang checks it.
        max_tokens = check_prompt_length(state, prompt_len, sp.max_new_tokens)
    else:
        # SGLang's default, shortened to what the context leaves.
        max_tokens = min(DEFAULT_MAX_NEW_TOKENS, check_prompt_length(state, prompt_len, None))
    top_k = sp.top_k
    if top_k is not None and top_k >= state.engine.model_info.vocab_size:
        top_k = -1  # SGLang's "whole vocabulary" (1 << 30)
    adapted = SimpleNamespace(
        n=1 if sp.n is None else sp.n, temperature=sp.temperature, top_p=sp.top_p, top_k=top_k, min_p=sp.min_p,
        repetition_penalty=sp.repetition_penalty, presence_penalty=sp.presence_penalty,
        frequency_penalty=sp.frequency_penalty, seed=sp.sampling_seed, stop=sp.stop,
        stop_token_ids=sp.stop_token_ids, ignore_eos=bool(sp.ignore_eos), min_tokens=sp.min_new_tokens or 0,
        skip_special_tokens=sp.skip_special_tokens is not False,
        spaces_between_special_tokens=sp.spaces_between_special_tokens is not False,
        include_stop_str_in_output=bool(sp.no_stop_trim), logit_bias=sp.logit_bias, allowed_token_ids=None)
    params = sampling_params(state, adapted, max_tokens, logprobs, logprobs)
    params.structured_outputs = _structured_outputs(sp)
    return params


def _structured_outputs(sp: SGLangSamplingParams) -> Optional[StructuredOutputsParams]:
    """SGLang's constraint fields as one StructuredOutputsParams (None without one). As SGLang
    checks them: at most one of json_schema, regex and ebnf; a structural_tag beside one of them
    is ignored (SGLang compiles the first of json_schema, regex, ebnf, structural_tag)."""
    given = [name for name in ("json_schema", "regex", "ebnf") if getattr(sp, name) is not None]
    if len(given) > 1:
        raise APIError("Only one of regex, json_schema, or ebnf can be set.", 400, f"sampling_params.{given[1]}")
    if sp.json_schema is not None:
        return StructuredOutputsParams(json={} if sp.json_schema == ANY_JSON else sp.json_schema)
    if sp.regex is not None:
        return StructuredOutputsParams(regex=sp.regex)
    if sp.ebnf is not None:
        if "::=" not in sp.ebnf:  # xgrammar would read a grammar without a rule as Lark
            raise APIError("Failed to compile ebnf grammar: a GBNF grammar defines its rules with ::= "
                           '(root ::= ...).', 400, "sampling_params.ebnf")
        return StructuredOutputsParams(grammar=sp.ebnf)
    if sp.structural_tag is not None:
        where = "sampling_params.structural_tag"
        try:
            return StructuredOutputsParams(structural_tag=_structural_tag(sp.structural_tag, where))
        except APIError as e:
            raise APIError(f"Failed to compile structural_tag grammar: {e.message}", 400, where) from None
    return None


async def _compile(state: ServerState, params: SamplingParams) -> None:
    """compile_grammar, its 400 in SGLang's words and under the sampling field's name."""
    so = params.structured_outputs
    if so is None:
        return
    field, kind = _GRAMMAR_FIELDS[so.kind()]
    try:
        await compile_grammar(state, params)
    except APIError as e:
        if e.status != 400:
            raise
        raise APIError(f"Failed to compile {kind} grammar: {e.message}", 400, f"sampling_params.{field}") from None


@dataclass
class _Prompt:
    """One prompt's engine request and what its outputs report."""
    run: RequestRun
    rids: list[str]  # one per choice
    logprob: bool
    top: int
    start: int  # first prompt position with input logprobs
    input_lp: Optional[list] = None  # [logprob|None, id, text|None] per position from `start`
    input_top: Optional[list] = None


@dataclass
class _Choice:
    prompt: _Prompt
    text: str = ""
    ids: list[int] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # _core.PositionLogprobs per output token
    finish_reason: Optional[str] = None
    stop_reason: Any = None


def _rids(req: GenerateRequest, count: int, n: int) -> list[str]:
    """SGLang's request ids, one per output: given, derived from one given id, or random."""
    total = count * n
    if req.rid is None:
        return [uuid.uuid4().hex for _ in range(total)]
    if isinstance(req.rid, str):
        return [req.rid] if total == 1 else [f"{req.rid}_{k}" for k in range(total)]
    if len(req.rid) != total:
        raise APIError(f"rid has {len(req.rid)} entries; the request makes {total} outputs.", 400, "rid")
    return list(req.rid)


async def prepare_generate(state: ServerState, req: GenerateRequest,
                           request_id: str) -> tuple[list[_Prompt], bool, int]:
    """Checks the request and submits one engine request per prompt: (prompts, single, n)."""
    _refuse_unsupported(req)
    state.check_capacity()
    prompts, single = await _prompts(state, req)
    count = len(prompts)
    checked = []
    for i, ids in enumerate(prompts):
        sp = _per_prompt(req.sampling_params, i, "sampling_params", count) or SGLangSamplingParams()
        logprob = bool(_per_prompt(req.return_logprob, i, "return_logprob", count))
        top = _per_prompt(req.top_logprobs_num, i, "top_logprobs_num", count) or 0
        start = _per_prompt(req.logprob_start_len, i, "logprob_start_len", count)
        if top < 0:
            raise APIError(f"top_logprobs_num must be at least 0, got {top}.", 400, "top_logprobs_num")
        start = len(ids) - 1 if start is None or start == -1 else start
        if logprob and not 0 <= start < len(ids):
            raise APIError(f"logprob_start_len must be -1 or in [0, {len(ids) - 1}] for a prompt of {len(ids)} "
                           f"tokens, got {start}.", 400, "logprob_start_len")
        params = _sampling(state, sp, len(ids), top if logprob else None)
        checked.append((ids, params, logprob, top, start))
    n = checked[0][1].n
    if n < 1:
        raise APIError(f"sampling_params.n must be at least 1, got {n}.", 400, "sampling_params.n")
    if any(p.n != n for _, p, *_ in checked):
        raise APIError("sampling_params.n must be the same for every prompt of a batch.", 400, "sampling_params.n")
    max_seqs = state.engine.model_info.max_num_seqs
    if n > max_seqs:
        raise APIError(f"n must be at most max_running_requests ({max_seqs}), got {n}.", 400, "sampling_params.n")
    rids = _rids(req, count, n)
    for _, params, *_ in checked:
        await _compile(state, params)  # prompts that share a constraint compile it once (cached)
    # As SGLang does, a priority is ignored unless priority scheduling is on.
    priority = (req.priority or 0) if getattr(state.args, "scheduling_policy", "fcfs") == "priority" else 0
    out: list[_Prompt] = []
    try:
        for i, (ids, params, logprob, top, start) in enumerate(checked):
            salt = _per_prompt(req.extra_key, i, "extra_key", count) or ""
            run = RequestRun(state, f"{request_id}-{i}", ids, params, i * n, priority, salt, streaming=req.stream)
            out.append(_Prompt(run, rids[i * n:(i + 1) * n], logprob, top, start))
    except BaseException:
        release_all([p.run for p in out])  # the engine refused one: none of them runs
        raise
    return out, single, n


def _finish_json(c: _Choice) -> Optional[dict]:
    if c.finish_reason is None:
        return None
    if c.finish_reason == "stop":
        # A stop string or stop token id; else the EOS token that ended the output.
        matched = c.stop_reason if c.stop_reason is not None else (c.ids[-1] if c.ids else None)
        return {"type": "stop", "matched": matched}
    if c.finish_reason == "length":
        return {"type": "length", "length": c.prompt.run.params.max_tokens}
    return {"type": "abort", "message": f"The request ended early ({c.finish_reason})."}


class _Outputs:
    """Per-choice state of a /generate request and SGLang's output dict of each choice."""

    def __init__(self, state: ServerState, req: GenerateRequest, prompts: list[_Prompt], n: int) -> None:
        self.state = state
        self.with_text = state.tokenizer is not None
        self.text_in_logprobs = req.return_text_in_logprobs
        self.weight_version = getattr(state.args, "weight_version", None) or "default"
        self.choices = [_Choice(p) for p in prompts for _ in range(n)]
        self.n = n

    def apply(self, d) -> _Choice:
        c = self.choices[d.index]
        c.text += d.text
        c.ids.extend(d.token_ids)
        c.logprobs.extend(d.logprobs)
        c.finish_reason, c.stop_reason = d.finish_reason, d.stop_reason
        return c

    def _entry(self, logprob, token_id: int) -> list:
        text = self.state.decode_token(token_id) if self.text_in_logprobs else None
        return [None if logprob is None else clean_logprob(logprob), token_id, text]

    def _tops(self, e, top: int) -> list:
        return [self._entry(lp, int(t)) for t, lp in zip(e.token_ids[1:top + 1], e.logprobs[1:top + 1])]

    def _input_logprobs(self, p: _Prompt) -> None:
        """The prompt's logprobs from `start` (the first prompt token has none), once they came."""
        ids = p.run.prompt_ids
        entries = p.run.prompt_logprobs
        if p.input_lp is not None or entries is None or len(entries) < len(ids) - 1:
            return
        lp, tops = [], []
        for pos in range(p.start, len(ids)):
            if pos == 0:
                lp.append(self._entry(None, ids[0]))
                tops.append(None)
            else:
                e = entries[pos - 1]  # the engine's entries start at the second prompt token
                lp.append(self._entry(e.logprobs[0], int(ids[pos])))
                tops.append(self._tops(e, p.top))
        p.input_lp, p.input_top = lp, tops

    def result(self, c: _Choice, index: int, with_index: bool) -> dict:
        p = c.prompt
        meta: dict[str, Any] = {"id": p.rids[index % self.n], "finish_reason": _finish_json(c),
                                "prompt_tokens": len(p.run.prompt_ids), "weight_version": self.weight_version,
                                "completion_tokens": len(c.ids), "cached_tokens": p.run.num_cached_tokens}
        if p.logprob:
            self._input_logprobs(p)
            meta["input_token_logprobs"] = p.input_lp or []
            meta["output_token_logprobs"] = [self._entry(e.logprobs[0], int(e.token_ids[0])) for e in c.logprobs]
            if p.top > 0:
                meta["input_top_logprobs"] = p.input_top or []
                meta["output_top_logprobs"] = [self._tops(e, p.top) for e in c.logprobs]
        if c.finish_reason is not None:
            meta["e2e_latency"] = time.monotonic() - p.run.arrival
        out: dict[str, Any] = {"text": c.text} if self.with_text else {}
        out["output_ids"] = list(c.ids)
        out["meta_info"] = meta
        if with_index:
            out["index"] = index
        return out


async def create_generate(state: ServerState, req: GenerateRequest, request_id: str,
                          disconnected: asyncio.Future) -> Union[dict, list, Streamed, None]:
    prompts, single, n = await prepare_generate(state, req, request_id)
    outputs = _Outputs(state, req, prompts, n)
    runs = [p.run for p in prompts]
    if req.stream:
        return Streamed(_stream(state, outputs, runs, single and n == 1, disconnected), runs)
    async for deltas in run_all(state, runs, disconnected):
        for d in deltas:
            outputs.apply(d)
    if not all(r.done for r in runs):
        return None  # the client went away
    results = [outputs.result(c, i, False) for i, c in enumerate(outputs.choices)]
    return results[0] if single and n == 1 else results


async def _stream(state: ServerState, outputs: _Outputs, runs: list[RequestRun], one: bool,
                  disconnected: asyncio.Future) -> AsyncIterator[str]:
    async for deltas in run_all(state, runs, disconnected):
        for d in deltas:
            c = outputs.apply(d)
            yield f"data: {json.dumps(outputs.result(c, d.index, not one), ensure_ascii=False)}\n\n"
    if all(r.done for r in runs):
        yield "data: [DONE]\n\n"
