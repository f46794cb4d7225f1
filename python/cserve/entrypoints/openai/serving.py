"""What completions and chat share: the server's state, prompt checks, sampling parameters
from a request (request > generation_config.json > vLLM's defaults), and RequestRun, which turns
one engine request's output batches into per-choice text, token and logprob deltas."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from cserve.engine import AsyncEngine, EngineDeadError, EngineRequestError
from cserve.engine.output_processor import ChoiceDelta, RequestOutputProcessor
from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.metrics import Metrics
from cserve.entrypoints.openai.parity import check_refused
from cserve.entrypoints.openai.structured_outputs import structured_outputs_from_request
from cserve.sampling_params import SamplingParams, StructuredOutputsParams

logger = logging.getLogger("cserve.server")

# Text longer than this is tokenized (and chats rendered) on a worker thread, off the event loop.
OFF_LOOP_CHARS = 2048


@dataclass
class ServerState:
    engine: AsyncEngine
    tokenizer: Any  # tokenizers.Tokenizer or None (--skip-tokenizer-init)
    model_path: str  # the model directory or GGUF file loaded
    served_names: list[str]
    max_model_len: int
    generation_defaults: dict[str, Any]
    metrics: Metrics
    args: Any  # the parsed `cserve serve` namespace
    chat_template: Any = None  # cserve.tokenizer.ChatTemplate or None
    executor: Any = None
    max_pending: int = 4096
    draining: bool = False
    tokenizer_config: dict[str, Any] = field(default_factory=dict)  # with the special-token strings
    token_strings: list[str] = field(default_factory=list)  # each id decoded alone (decode_token)
    max_prompt_chars: Optional[int] = None  # longer text cannot fit max_model_len: refused untokenized
    grammars: Any = None  # cserve.structured.GrammarService (None without a tokenizer)
    ranks: Any = None  # cserve.engine.tensor_parallel.TensorParallelRanks (tensor parallelism)

    def __post_init__(self) -> None:
        if self.tokenizer is not None and not self.token_strings:
            # Once, with the GIL released: logprob tokens are then lookups, not decodes on the loop.
            size = max(self.engine.model_info.vocab_size, self.tokenizer.get_vocab_size())
            self.token_strings = self.tokenizer.decode_batch([[i] for i in range(size)], skip_special_tokens=False)
            # A token covers at most `longest` characters, so a longer text needs more tokens than
            # the context holds (x2 for normalizers that drop characters).
            longest = max((len(t) for t in self.token_strings), default=1)
            self.max_prompt_chars = 2 * self.max_model_len * max(longest, 1)

    @property
    def model_name(self) -> str:
        return self.served_names[0]

    def check_model(self, name: Optional[str]) -> None:
        if name and name not in self.served_names:
            raise APIError(f"The model `{name}` does not exist.", 404, "model")

    def check_capacity(self) -> None:
        if self.draining or not self.engine.running:
            raise APIError("The server is shutting down.", 503)
        if self.engine.num_in_flight >= self.max_pending:
            raise APIError(f"The server is at capacity ({self.max_pending} requests in flight); retry later.", 503)

    async def off_loop(self, size: int, fn, *a):
        """Runs fn on the worker thread when the input is long, inline when it is short."""
        if size < OFF_LOOP_CHARS:
            return fn(*a)
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *a)

    def require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise APIError("This server runs with --skip-tokenizer-init: send token ids, not text.", 400)
        return self.tokenizer

    async def tokenize(self, text: str, add_special_tokens: bool, check_length: bool = True) -> list[int]:
        return (await self.tokenize_many([text], add_special_tokens, check_length))[0]

    async def tokenize_many(self, texts: list[str], add_special_tokens: bool,
                            check_length: bool = True) -> list[list[int]]:
        """Token ids of each text; long input on the worker thread through the batch call, which
        releases the GIL (a single encode holds it, freezing the event loop). With check_length,
        text too long for the context is refused before it is tokenized."""
        tok = self.require_tokenizer()
        for text in texts:
            if check_length and self.max_prompt_chars is not None and len(text) > self.max_prompt_chars:
                raise APIError(f"The prompt has {len(text)} characters, more than this model's maximum context "
                               f"length of {self.max_model_len} tokens can hold. Please reduce the length of the "
                               "input.", 400, "prompt")
        if sum(len(t) for t in texts) < OFF_LOOP_CHARS:
            return [tok.encode(t, add_special_tokens=add_special_tokens).ids for t in texts]
        encodings = await asyncio.get_running_loop().run_in_executor(
            self.executor, lambda: tok.encode_batch(texts, add_special_tokens=add_special_tokens))
        return [e.ids for e in encodings]

    def decode_token(self, token_id: int, as_id: Optional[bool] = None) -> str:
        """The token's text for logprobs; "token_id:N" with as_id (None: --return-tokens-as-token-ids)."""
        if as_id is None:
            as_id = self.args.return_tokens_as_token_ids
        if as_id or self.tokenizer is None:
            return f"token_id:{token_id}"
        if 0 <= token_id < len(self.token_strings):
            return self.token_strings[token_id]
        return self.tokenizer.decode([token_id], skip_special_tokens=False)


def check_list_sizes(state: ServerState, data: dict) -> None:
    """Cheap size checks on the raw body before it is validated, since validating millions of
    ints holds the GIL for seconds: token-id prompts over the context (unless they are to be
    truncated), and id lists or logit_bias maps longer than the vocabulary, are refused."""
    limit = state.max_model_len
    prompt = data.get("prompt")
    max_tokens = data.get("max_tokens", 16)
    if isinstance(prompt, list) and data.get("truncate_prompt_tokens") is None:
        lists = prompt if prompt and isinstance(prompt[0], list) else [prompt]
        for ids in lists:
            if isinstance(ids, list) and len(ids) > limit and all(isinstance(t, int) for t in ids[:8]):
                room = limit - max_tokens if isinstance(max_tokens, int) and 0 <= max_tokens <= limit else limit
                raise vllm_error(f"This model's maximum context length is {room} tokens. However, your request "
                                 f"has {len(ids)} input tokens. Please reduce the length of the input messages.",
                                 "input_tokens", len(ids))
    vocab = state.engine.model_info.vocab_size
    for name in ("allowed_token_ids", "stop_token_ids", "logit_bias", "tokens"):
        value = data.get(name)
        bound = 4 * limit if name == "tokens" else vocab
        if isinstance(value, (list, dict)) and len(value) > max(bound, 1024):
            raise APIError(f"{name} has {len(value)} entries; at most {max(bound, 1024)} are accepted.", 400, name)


def check_prompt_length(state: ServerState, prompt_len: int, max_tokens: Optional[int]) -> int:
    """vLLM's context checks; returns max_tokens (the rest of the context when not given)."""
    limit = state.max_model_len
    if prompt_len == 0:
        raise APIError("The prompt cannot be empty.", 400, "prompt")
    if prompt_len >= limit:
        raise APIError(f"This model's maximum context length is {limit} tokens. However, your request has "
                       f"{prompt_len} input tokens. Please reduce the length of the input.", 400, "prompt")
    if max_tokens is None:
        return limit - prompt_len
    if prompt_len + max_tokens > limit:
        raise APIError(f"This model's maximum context length is {limit} tokens. However, you requested "
                       f"{prompt_len + max_tokens} tokens ({prompt_len} in the messages, {max_tokens} in the "
                       f"completion). Please reduce the length of the messages or completion.", 400, "max_tokens")
    return max_tokens


def vllm_error(message: str, param: str, value: Any = None) -> APIError:
    """A 400 worded as vLLM's VLLMValidationError prints: the message, then the parameter and value."""
    extras = [f"parameter={param}"] + ([f"value={value}"] if value is not None else [])
    return APIError(f"{message} ({', '.join(extras)})", 400, param)


def completion_prompt_limit(state: ServerState, request) -> int:
    """vLLM's completions checks before tokenizing: max_tokens against the context, and
    truncate_prompt_tokens against the room left; returns the most prompt tokens allowed."""
    limit, max_tokens = state.max_model_len, request.max_tokens
    if max_tokens is not None and max_tokens > limit:
        raise vllm_error(f"'max_tokens' ({max_tokens}) cannot be greater than the model's maximum context length "
                         f"({limit}).", "max_tokens", max_tokens)
    room = limit - (max_tokens or 0)
    t = request.truncate_prompt_tokens
    if t is not None and t != 0:
        t = limit if t < 0 else t
        if t > room:
            raise APIError(f"truncate_prompt_tokens={t} cannot be greater than max_length={room}. Please select a "
                           "smaller truncation size.", 400, "truncate_prompt_tokens")
    return room


def check_completion_length(state: ServerState, request, ids: list[int], room: int) -> int:
    """vLLM's completions checks on one tokenized (and truncated) prompt; returns max_tokens."""
    limit = state.max_model_len
    if len(ids) > room:
        raise vllm_error(f"This model's maximum context length is {room} tokens. However, your request has "
                         f"{len(ids)} input tokens. Please reduce the length of the input messages.",
                         "input_tokens", len(ids))
    if not ids:
        raise APIError("The decoder prompt cannot be empty", 400, "prompt")
    if len(ids) == limit:
        raise APIError(f"The decoder prompt (length {len(ids)}) plus the number of requested output tokens (at "
                       f"least 1) is longer than the maximum model length of {limit}. Make sure that "
                       "`max_model_len` is no smaller than the number of text tokens (prompt + requested output "
                       "tokens).", 400, "prompt")
    return vllm_max_tokens(state, request.max_tokens, len(ids))


def check_chat_length(state: ServerState, request, ids: list[int]) -> int:
    """vLLM's chat checks on the rendered, tokenized (and truncated) prompt; returns max_tokens."""
    limit = state.max_model_len
    requested = request.max_completion_tokens or request.max_tokens
    if len(ids) >= limit:
        raise vllm_error(f"This model's maximum context length is {limit} tokens. However, your request has "
                         f"{len(ids)} input tokens. Please reduce the length of the input messages.",
                         "input_tokens", len(ids))
    if requested is not None and len(ids) + requested > limit:
        raise vllm_error(f"'max_tokens' or 'max_completion_tokens' is too large: {requested}. This model's maximum "
                         f"context length is {limit} tokens and your request has {len(ids)} input tokens "
                         f"({requested} > {limit} - {len(ids)}).", "max_tokens", requested)
    t = request.truncate_prompt_tokens
    if t is not None and t > limit:
        raise APIError(f"truncate_prompt_tokens value ({t}) is greater than max_model_len ({limit}). Please, "
                       "select a smaller truncation size.", 400, "truncate_prompt_tokens")
    if not ids:
        raise APIError("The decoder prompt cannot be empty", 400, "messages")
    return vllm_max_tokens(state, requested, len(ids))


def vllm_max_tokens(state: ServerState, requested: Optional[int], prompt_len: int) -> int:
    """vLLM's get_max_tokens: the least of the rest of the context, the request's max_tokens and
    generation_config.json's."""
    values = (state.max_model_len - prompt_len, requested, state.generation_defaults.get("max_tokens"))
    return min(v for v in values if v is not None)


def check_common(state: ServerState, request, endpoint: Optional[str] = None) -> None:
    """The checks vLLM makes on a request before it renders the prompt, with vLLM's messages."""
    check_refused(request, endpoint or ("chat" if hasattr(request, "messages") else "completions"))
    if request.n < 1:
        raise APIError(f"n must be at least 1, got {request.n}.", 400, "n")
    max_seqs = state.engine.model_info.max_num_seqs
    if request.n > max_seqs:
        raise APIError(f"n must be at most max_num_seqs ({max_seqs}), got {request.n}.", 400, "n")
    if request.priority != 0 and state.args.scheduling_policy != "priority":
        raise APIError(f"Got priority {request.priority} but priority scheduling is not enabled "
                       "(start the server with --scheduling-policy priority).", 400, "priority")
    so = request.stream_options
    if so is not None and (so.model_fields_set or so.model_extra) and not request.stream:
        raise vllm_error("Stream options can only be defined when `stream=True`.", "stream_options")
    plp = request.prompt_logprobs
    if plp is not None:
        if request.stream and (plp > 0 or plp == -1):
            raise vllm_error("`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
        if plp < -1:
            raise vllm_error("`prompt_logprobs` must be a positive value or -1.", "prompt_logprobs", plp)
    if "cache_salt" in request.model_fields_set and not request.cache_salt:
        raise APIError("Parameter 'cache_salt' must be a non-empty string if provided.", 400, "cache_salt")
    t = request.truncate_prompt_tokens
    if t is not None and t < -1:
        raise APIError("truncate_prompt_tokens: Input should be greater than or equal to -1", 400,
                       "truncate_prompt_tokens")
    if t == 0:
        raise vllm_error(f"truncate_prompt_tokens must be an integer >= 1 or -1, got {t}", "truncate_prompt_tokens",
                         t)


def check_sampling_values(state: ServerState, p: SamplingParams) -> None:
    """vLLM's SamplingParams and input-processor checks, with its messages (and the field named)."""
    if not -2.0 <= p.presence_penalty <= 2.0:
        raise APIError(f"presence_penalty must be in [-2, 2], got {p.presence_penalty}.", 400, "presence_penalty")
    if not -2.0 <= p.frequency_penalty <= 2.0:
        raise APIError(f"frequency_penalty must be in [-2, 2], got {p.frequency_penalty}.", 400, "frequency_penalty")
    if p.repetition_penalty <= 0.0:
        raise APIError(f"repetition_penalty must be greater than zero, got {p.repetition_penalty}.", 400,
                       "repetition_penalty")
    if p.temperature < 0.0:
        raise vllm_error(f"temperature must be non-negative, got {p.temperature}.", "temperature", p.temperature)
    if not 0.0 < p.top_p <= 1.0:
        raise vllm_error(f"top_p must be in (0, 1], got {p.top_p}.", "top_p", p.top_p)
    if p.top_k < -1:
        raise APIError(f"top_k must be 0 (disable), or at least 1, got {p.top_k}.", 400, "top_k")
    if not 0.0 <= p.min_p <= 1.0:
        raise APIError(f"min_p must be in [0, 1], got {p.min_p}.", 400, "min_p")
    if p.max_tokens is not None and p.max_tokens < 1:
        raise vllm_error(f"max_tokens must be at least 1, got {p.max_tokens}.", "max_tokens", p.max_tokens)
    if p.min_tokens < 0:
        raise APIError(f"min_tokens must be greater than or equal to 0, got {p.min_tokens}.", 400, "min_tokens")
    if p.max_tokens is not None and p.min_tokens > p.max_tokens:
        raise APIError(f"min_tokens must be less than or equal to max_tokens={p.max_tokens}, got {p.min_tokens}.",
                       400, "min_tokens")
    for name, kind in (("logprobs", "sample"), ("prompt_logprobs", "prompt")):
        want = getattr(p, name)
        if not want:
            continue
        if want < -1:
            raise vllm_error(f"{name} must be non-negative or -1, got {want}.", name, want)
        vocab = state.engine.model_info.vocab_size
        limit = state.args.max_logprobs
        limit = vocab if limit is None or limit == -1 else limit
        want = vocab if want == -1 else want
        if want > limit:
            raise vllm_error(f"Requested {kind} logprobs of {want}, which is greater than max allowed: {limit}",
                             name, want)


def sampling_params(state: ServerState, request, max_tokens: int, logprobs: Optional[int],
                    prompt_logprobs: Optional[int]) -> SamplingParams:
    d = state.generation_defaults

    def pick(name: str, fallback):
        value = getattr(request, name, None)
        if value is not None:
            return value
        return d.get(name, fallback)

    try:
        bias = {int(k): float(v) for k, v in (request.logit_bias or {}).items()}
    except ValueError:
        raise APIError("logit_bias keys must be token ids.", 400, "logit_bias") from None
    structured = structured_outputs(state, request)
    try:
        params = SamplingParams(
            n=request.n, temperature=pick("temperature", 1.0), top_p=pick("top_p", 1.0), top_k=pick("top_k", 0),
            min_p=pick("min_p", 0.0), repetition_penalty=pick("repetition_penalty", 1.0),
            presence_penalty=pick("presence_penalty", 0.0), frequency_penalty=pick("frequency_penalty", 0.0),
            seed=request.seed, stop=request.stop, stop_token_ids=request.stop_token_ids,
            ignore_eos=request.ignore_eos, max_tokens=max_tokens, min_tokens=request.min_tokens,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            include_stop_str_in_output=request.include_stop_str_in_output, logit_bias=bias or None,
            allowed_token_ids=request.allowed_token_ids, structured_outputs=structured,
        )
    except (ValueError, TypeError) as e:
        raise APIError(str(e), 400) from None
    check_sampling_values(state, params)
    return params


def structured_outputs(state: ServerState, request) -> Optional[StructuredOutputsParams]:
    """The request's structured-outputs constraint, worked out once per request (the prompts of
    one completions request share it)."""
    if getattr(request, "_structured_outputs", False) is False:
        so = structured_outputs_from_request(request)
        if so is not None and state.tokenizer is None:
            raise APIError("Structured outputs requires a tokenizer so it can't be used with "
                           "'skip_tokenizer_init'", 400)
        request._structured_outputs = so
    return request._structured_outputs


async def compile_grammar(state: ServerState, params: SamplingParams,
                          template_kwargs: Optional[dict] = None) -> None:
    """Compiles params.structured_outputs (400 naming the problem when it cannot be), and with a
    reasoning parser sets where the grammar starts: after the reasoning, as vLLM."""
    so = params.structured_outputs
    if so is None:
        return
    if state.grammars is None:
        raise APIError("Structured outputs need the tokenizer; this server runs with --skip-tokenizer-init.", 400,
                       "structured_outputs")
    from cserve.structured import GrammarError

    try:
        params.compiled_grammar = await state.grammars.compile_async(so)
    except GrammarError as e:
        raise APIError(str(e), 400, e.param) from None
    name = state.grammars.config.reasoning_parser
    if name:
        from cserve.parsers.reasoning import get_reasoning_parser

        params.grammar_start_after = state.grammars.start_after(get_reasoning_parser(name)(template_kwargs))


def default_max_tokens(state: ServerState, requested: Optional[int]) -> Optional[int]:
    return requested if requested is not None else state.generation_defaults.get("max_tokens")


def truncate_prompt(state: ServerState, ids: list[int], request) -> list[int]:
    """truncate_prompt_tokens (-1: max_model_len) from truncation_side: "left" (vLLM's default for
    generation) keeps the last tokens, "right" the first."""
    truncate = request.truncate_prompt_tokens
    if truncate is None or truncate == 0:
        return ids
    keep = state.max_model_len if truncate < 0 else truncate
    return ids[:keep] if request.truncation_side == "right" else ids[-keep:]


def clean_logprob(v: float) -> float:
    return -9999.0 if v == -math.inf or math.isnan(v) else float(v)


class RequestRun:
    """One prompt's engine request: n choices, each with its incremental detokenizer."""

    def __init__(self, state: ServerState, request_id: str, prompt_ids: list[int], params: SamplingParams,
                 first_choice: int, priority: int = 0, cache_salt: str = "", streaming: bool = False) -> None:
        self.state = state
        self.streaming = streaming
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.output = RequestOutputProcessor(params, state.tokenizer, first_choice)
        self.times = state.metrics.request()  # vLLM's per-request metrics (metrics.RequestTimes)
        self.arrival = self.times.arrival
        self._finish_recorded = False
        try:
            core = params.to_core(state.max_model_len, len(prompt_ids))
            self.stream = state.engine.add(prompt_ids, core, priority, cache_salt)
        except (ValueError, TypeError, OverflowError) as e:
            raise APIError(str(e), 400) from None
        self._released = False

    @property
    def choices(self):
        return self.output.choices

    @property
    def prompt_logprobs(self):
        return self.output.prompt_logprobs

    @property
    def num_cached_tokens(self) -> int:
        return self.output.num_cached_tokens

    @property
    def done(self) -> bool:
        return self.output.done

    def apply(self, batch: list) -> list[ChoiceDelta]:
        deltas: list[ChoiceDelta] = []
        now = time.monotonic()
        for out in batch:
            delta = self.output.process(out)
            if delta is None:
                continue
            self.times.engine = getattr(out, "engine", 0)  # the data-parallel replica (vLLM's engine label)
            # When the engine made the tokens (as vLLM's engine-core timestamps), not when this
            # process got round to them: one wake-up may drain several steps' outputs.
            self._record_tokens(len(delta.token_ids), min(now, getattr(out, "time", 0.0) or now))
            deltas.append(delta)
            self._log_output(self.output.choices[out.index], delta)
        if self.done and not self.stream.finished:
            self.state.engine.abort(self.stream)  # every choice hit a stop string
        if self.done:
            self._record_finish(now)
        return deltas

    def _log_output(self, c, delta: ChoiceDelta) -> None:
        """--enable-log-outputs: each streamed delta (unless --no-enable-log-deltas), and every
        choice's whole output when it ends."""
        args = self.state.args
        if not args.enable_log_outputs:
            return
        limit = args.max_log_len
        if self.streaming and args.enable_log_deltas and (delta.text or delta.token_ids):
            logger.info("Generated response %s (streaming delta): output: %r, output_token_ids: %s, "
                        "finish_reason: %s", self.request_id, delta.text[:limit], delta.token_ids[:limit],
                        delta.finish_reason)
        if c.finish_reason is not None:
            kind = " (streaming complete)" if self.streaming else ""
            logger.info("Generated response %s%s: output: %r, output_token_ids: %s, finish_reason: %s",
                        self.request_id, kind, c.detok.text[:limit], c.token_ids[:limit], c.finish_reason)

    def _record_tokens(self, count: int, now: float) -> None:
        self.times.tokens(count, now, len(self.prompt_ids), self.output.num_cached_tokens)

    def _record_finish(self, now: float) -> None:
        if not self._finish_recorded:
            self._finish_recorded = True
            self.times.finished(now, [c.finish_reason or "abort" for c in self.choices],
                                [len(c.token_ids) for c in self.choices], len(self.prompt_ids),
                                self.params.max_tokens, self.output.scheduled_time)

    def release(self) -> None:
        """Ends the engine request if it still runs and forgets it (idempotent). A request that
        did not finish counts as "error" when the engine failed it, else (client gone, batch
        refused, shutdown) as "abort", as vLLM counts them."""
        if self._released:
            return
        self._released = True
        self.state.engine.release(self.stream)
        if not self.done:
            failed = isinstance(self.stream.error, EngineRequestError)
            for c in self.choices:
                c.finish_reason = c.finish_reason or ("error" if failed else "abort")
            self._record_finish(time.monotonic())


def release_all(runs: list[RequestRun]) -> None:
    for r in runs:
        r.release()


@dataclass
class Streamed:
    """A streamed response's chunks and the requests behind them, which the server releases
    when the response ends however it ends (even if the client left before the first chunk)."""
    chunks: AsyncIterator[str]
    runs: list[RequestRun]


_DISCONNECTED = object()


async def run_all(state: ServerState, runs: list[RequestRun],
                  disconnected: Optional[asyncio.Future] = None) -> AsyncIterator[list[ChoiceDelta]]:
    """Yields the deltas of all runs as their outputs arrive (one item per engine wake-up per
    run). Stops early, aborting what is left, when `disconnected` completes or the consumer
    stops iterating."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(run: RequestRun) -> None:
        try:
            async for batch in state.engine.iterate(run.stream):
                await queue.put((run, batch))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((run, e))
            return
        await queue.put((run, None))

    tasks = [asyncio.ensure_future(pump(r)) for r in runs]
    watcher = None
    if disconnected is not None:
        watcher = asyncio.ensure_future(_forward(disconnected, queue))
    open_runs = len(runs)
    try:
        while open_runs:
            item = await queue.get()
            if item is _DISCONNECTED:
                return
            run, batch = item
            if batch is None:
                open_runs -= 1
                continue
            try:
                if isinstance(batch, BaseException):
                    raise batch
                deltas = run.apply(batch)
            except EngineRequestError as e:
                raise APIError(f"Internal server error: {e}", 500) from None
            except EngineDeadError as e:  # stopped under the request (shutdown)
                raise APIError(f"The server is shutting down: {e}", 503) from None
            if deltas:
                yield deltas
    finally:
        if watcher is not None:
            watcher.cancel()
        for t in tasks:
            t.cancel()
        release_all(runs)  # a task cancelled before it ran never reaches its own cleanup


async def _forward(fut: asyncio.Future, queue: asyncio.Queue) -> None:
    await fut
    await queue.put(_DISCONNECTED)


def prompt_logprobs_json(state: ServerState, entries, prompt_ids: list[int]) -> Optional[list]:
    """vLLM's prompt_logprobs: None for the first token, then {token_id: {logprob, rank, decoded_token}}."""
    if entries is None:
        return None
    out: list = [None]
    for e in entries:
        pos: dict[int, dict[str, Any]] = {}
        for tid, lp, rank in zip(e.token_ids, e.logprobs, e.ranks):
            pos.setdefault(int(tid), {"logprob": clean_logprob(lp), "rank": int(rank),
                                      "decoded_token": state.decode_token(int(tid), False)})
        out.append(pos)
    return out


def usage(prompt_tokens: int, completion_tokens: int, cached: Optional[int], details: bool) -> dict:
    u = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
         "total_tokens": prompt_tokens + completion_tokens}
    if details and cached:  # as vLLM: only when some prompt tokens came from the prefix cache
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    return u
