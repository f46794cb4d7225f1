"""The OpenAI-compatible HTTP server: FastAPI on uvicorn (uvloop), one engine per process.

build_state() loads the model; build_app() makes the FastAPI app; run_server() serves it on
TCP, TLS or a Unix socket until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cserve.engine import EngineDeadError
from cserve.entrypoints.auth import key_matches
from cserve.entrypoints.openai.errors import APIError, error_body
from cserve.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, random_id
from cserve.entrypoints.openai.serving import ServerState, Streamed, check_list_sizes, release_all
from cserve.entrypoints.openai.metrics import spec_decode_log_line, spec_decode_totals

logger = logging.getLogger("cserve.server")


def _error(message: str, status: int, param: Optional[str] = None) -> JSONResponse:
    return JSONResponse(error_body(message, status, param), status_code=status)


def _watch_disconnect(request: Request) -> asyncio.Future:
    """Completes when the client closes its connection (uvicorn sends http.disconnect)."""

    async def wait() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    return asyncio.ensure_future(wait())


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(body: bytes) -> dict:
    """The body as a JSON object, or a 400: not UTF-8, not JSON (NaN and Infinity included), not
    an object, or strings with lone surrogates (which no tokenizer can take)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(f"The request body is not valid UTF-8: {e}", 400) from None
    try:
        data = json.loads(text, parse_constant=_no_constant) if text else {}
    except (ValueError, RecursionError) as e:
        raise APIError(f"The request body is not valid JSON: {e}", 400) from None
    if not isinstance(data, dict):
        raise APIError("The request body must be a JSON object.", 400)
    if _SURROGATE_ESCAPE.search(text):  # only a JSON escape can bring one: UTF-8 cannot
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise APIError("The request body holds a string with a lone surrogate (invalid Unicode).", 400) from None
    return data


async def _parse(request: Request, model: type, state: ServerState, check=check_list_sizes) -> Any:
    """The body validated as `model`; `check(state, data)` runs on the raw JSON first (the size
    checks, with the field names of the endpoint's dialect)."""
    data = parse_json_body(await request.body())
    check(state, data)
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise APIError(f"{where}: {first.get('msg')}" if where else str(first.get("msg")), 400,
                       where or None) from None
    if parsed.model_extra:
        logger.warning("The following fields were present in the request but ignored: %s", set(parsed.model_extra))
    return parsed


def _request_id(request: Request, prefix: str, body_id: Optional[str] = None) -> str:
    """vLLM's response id: the X-Request-Id header, else the body's request_id, else random."""
    given = request.headers.get("x-request-id") or body_id
    return f"{prefix}-{given}" if given else random_id(prefix)


def _log_request(state: ServerState, request_id: str, prompt: Any, params: Any) -> None:
    if not state.args.enable_log_requests:
        return
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    limit = state.args.max_log_len
    if limit is not None:
        text = text[:limit]
    logger.info("Received request %s: prompt: %r, params: %s", request_id, text, params)


class _ASGIGuards:
    """Plain ASGI middleware: the h11 header-count limit (--h11-max-header-count), the request
    body limit (--max-request-body-size: 413), the API key on /v1 routes (compared in constant
    time), and the X-Request-Id response header."""

    def __init__(self, app, state: ServerState, api_keys: list[str]) -> None:
        self.app = app
        self.state = state
        self.tokens = [f"Bearer {k}".encode() for k in api_keys]

    def _limit_body(self, headers, receive):
        """The receive callable with the body limit applied; raises APIError(413) where the
        declared or received size passes it (the app's handler turns that into the response)."""
        limit = self.state.args.max_request_body_size
        declared = dict(headers).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise APIError("Invalid Content-Length header.", 400) from None
            if size > limit:
                raise APIError(f"The request body is {size} bytes; the limit is {limit} "
                               "(--max-request-body-size).", 413)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise APIError(f"The request body is larger than the limit of {limit} bytes "
                                   "(--max-request-body-size).", 413)
            return message

        return limited

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        args = self.state.args
        headers = scope["headers"]
        if args.h11_max_header_count and len(headers) > args.h11_max_header_count:
            return await _send_error(send, f"Too many request headers (limit {args.h11_max_header_count}).", 431)
        root = scope.get("root_path", "")
        path = scope["path"][len(root):] if root and scope["path"].startswith(root) else scope["path"]
        if self.tokens and scope["method"] != "OPTIONS" and path.startswith("/v1"):
            if not key_matches(dict(headers).get(b"authorization"), self.tokens):
                return await _send_error(send, "Unauthorized", 401)
        try:
            receive = self._limit_body(headers, receive)
        except APIError as e:
            return await _send_error(send, e.message, e.status)
        if not args.enable_request_id_headers:
            return await self.app(scope, receive, send)
        rid = dict(headers).get(b"x-request-id") or random_id("req").encode()

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class _SSEResponse(StreamingResponse):
    """A streamed completion. An error after the first chunk becomes an error event (then
    [DONE]), as vLLM streams it; the requests behind the stream are released when the response
    ends however it ends, even when the client left before the first chunk was produced."""

    def __init__(self, streamed: Streamed, watcher: asyncio.Future) -> None:
        self._streamed = streamed
        self._watcher = watcher
        super().__init__(self._events(), media_type="text/event-stream")

    async def _events(self):
        try:
            async for item in self._streamed.chunks:
                yield item
        except APIError as e:
            yield f"data: {json.dumps(error_body(e.message, e.status, e.param))}\n\n"
            yield "data: [DONE]\n\n"

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._watcher.cancel()
            release_all(self._streamed.runs)


async def respond(state: ServerState, request: Request, create, parsed, request_id: str) -> Response:
    """Runs a generation endpoint's `create(state, parsed, request_id, disconnected)`: a JSON
    body, a stream (Streamed), or None when the client left before the answer."""
    watcher = _watch_disconnect(request)
    try:
        result = await create(state, parsed, request_id, watcher)
    except BaseException:
        watcher.cancel()
        raise
    if not isinstance(result, Streamed):
        watcher.cancel()
        if result is None:
            return Response(status_code=499)  # the client is gone; nobody reads this
        return JSONResponse(result)
    return _SSEResponse(result, watcher)


async def _send_error(send, message: str, status: int) -> None:
    body = json.dumps(error_body(message, status)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def build_app(state: ServerState, on_startup=None, on_shutdown=None) -> FastAPI:
    from cserve import __version__
    from cserve.entrypoints.openai.serving_chat import create_chat_completion
    from cserve.entrypoints.openai.serving_completion import create_completion
    from cserve.entrypoints.openai.serving_endpoints import (DetokenizeRequest, TokenizeRequest, add_endpoint_routes,
                                                             add_invocations_route)

    args = state.args

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()
        stats_task = None if args.disable_log_stats else asyncio.ensure_future(_log_stats(state))
        if on_startup is not None:
            await on_startup()
        try:
            yield
        finally:
            state.draining = True
            if stats_task is not None:
                stats_task.cancel()
            if on_shutdown is not None:
                await on_shutdown()
            state.engine.stop()
            if state.grammars is not None:
                state.grammars.close()  # the compile worker process goes with the server

    docs = {} if not args.disable_fastapi_docs else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(lifespan=lifespan, root_path=args.root_path or "", title="cserve", version=__version__, **docs)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError):
        return _error(e.message, e.status, e.param)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError):
        return _error(str(e), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        return _error(str(e.detail), e.status_code)

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_: Request, e: EngineDeadError):
        return _error(str(e), 503)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, e: Exception):
        if args.log_error_stack:
            logger.exception("request failed")
        else:
            logger.error("request failed: %s: %s", type(e).__name__, e)
        return _error(f"Internal server error: {type(e).__name__}", 500)

    async def _generate(request: Request, body_type: type, prefix: str, prompt_field: str, create, parsed=None):
        if parsed is None:
            parsed = await _parse(request, body_type, state)
        rid = _request_id(request, prefix, getattr(parsed, "request_id", None))
        _log_request(state, rid, getattr(parsed, prompt_field),
                     parsed.model_dump(exclude={prompt_field}, exclude_none=True))
        return await respond(state, request, create, parsed, rid)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(request, CompletionRequest, "cmpl", "prompt", create_completion)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(request, ChatCompletionRequest, "chatcmpl", "messages", create_chat_completion)

    # models, health, ping, version, load, tokenize, detokenize, tokenizer_info, metrics, dev routes
    add_endpoint_routes(app, state)
    add_invocations_route(app, state, _generate)

    from cserve.entrypoints.sglang import add_sglang_routes
    from cserve.entrypoints.sglang.protocol import GenerateRequest

    add_sglang_routes(app, state)
    _describe_request_bodies(app, {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest,
                                   "/tokenize": TokenizeRequest, "/detokenize": DetokenizeRequest,
                                   "/generate": GenerateRequest},
                             lambda doc: _narrow_to_this_server(doc, state))
    app.add_middleware(_ASGIGuards, state=state, api_keys=api_keys(args))
    from fastapi.middleware.cors import CORSMiddleware

    app.add_middleware(CORSMiddleware, allow_origins=args.allowed_origins, allow_credentials=args.allow_credentials,
                       allow_methods=args.allowed_methods, allow_headers=args.allowed_headers)
    return app


def _narrow_to_this_server(doc: dict, state: ServerState) -> None:
    """Bounds that depend on the model and flags: served names, the vocabulary, n, logprobs,
    priority."""
    info = state.engine.model_info
    names = list(state.served_names)
    schemas = doc["components"]["schemas"]
    max_logprobs = state.args.max_logprobs

    def narrow(node) -> None:
        if isinstance(node, dict):
            if node.pop("x-token-id", False):
                node.update(minimum=0, maximum=info.vocab_size - 1)
            for value in node.values():
                narrow(value)
        elif isinstance(node, list):
            for value in node:
                narrow(value)

    narrow(schemas)
    for name in ("CompletionRequest", "ChatCompletionRequest", "TokenizeRequest", "DetokenizeRequest"):
        props = schemas[name]["properties"]
        props["model"] = {"enum": [*names, None]}
        if "n" in props:
            props["n"].update(maximum=info.max_num_seqs)
        for field in ("logprobs", "top_logprobs", "prompt_logprobs"):
            if field in props and max_logprobs is not None and max_logprobs >= 0:
                props[field]["maximum"] = max_logprobs
        if "priority" in props and state.args.scheduling_policy != "priority":
            props["priority"] = {"enum": [0]}
    for method in doc["paths"].get("/v1/models/{name}", {}).values():
        for param in method.get("parameters", []):
            if param["name"] == "name":
                param["schema"] = {"enum": names}


def _describe_request_bodies(app: FastAPI, bodies: dict[str, type], narrow=None) -> None:
    """/openapi.json with each POST route's real request body (fields, types and bounds): the
    routes read and validate their bodies themselves, so FastAPI cannot see them."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for path, model in bodies.items():
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
                doc["paths"][path]["post"]["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            if narrow is not None:
                narrow(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def api_keys(args) -> list[str]:
    """--api-key, else the VLLM_API_KEY environment variable, as vLLM reads them."""
    if args.api_key:
        return args.api_key if isinstance(args.api_key, list) else [args.api_key]
    env_key = os.environ.get("VLLM_API_KEY")
    return [env_key] if env_key else []


def build_state(args, pending=None) -> ServerState:
    """Loads the model (or waits for `pending`, a start_engine_load future), tokenizer, chat
    template and generation defaults; logs where time went."""
    from cserve.engine.data_parallel_layout import layout_from_args
    from cserve.entrypoints.openai.engine_loader import start_engine_load
    from cserve.entrypoints.openai.metrics import Metrics, cache_config_info
    from cserve.generation_config import load_generation_defaults
    from cserve.tokenizer.loading import load_template, load_tokenizer, tokenizer_config

    t0 = time.perf_counter()
    model = args.model
    if pending is None:
        pending = start_engine_load(args)
    tokenizer_dir = args.tokenizer or model
    tokenizer = None if args.skip_tokenizer_init else load_tokenizer(tokenizer_dir)
    if tokenizer is None and not args.skip_tokenizer_init:
        raise FileNotFoundError(f"{tokenizer_dir}: no tokenizer (tokenizer.json or GGUF metadata); pass --tokenizer "
                                "or --skip-tokenizer-init")
    template = None
    if not args.skip_tokenizer_init:
        template = load_template(tokenizer_dir, args.chat_template)
    defaults = load_generation_defaults(model, args.generation_config, args.override_generation_config)
    t_tokenizer = time.perf_counter() - t0
    engine, config, t_engine, ranks = pending.result()
    info = engine.model_info()
    if defaults:
        logger.info("Default sampling parameters from the generation config: %s", defaults)
    names = list(args.served_model_name or [model])
    from cserve.engine import AsyncEngine

    per_engine = getattr(engine, "replica_stats", None)  # data parallelism: one series per replica
    metrics = Metrics(names[0], info.max_model_len, per_engine or (lambda: [engine.stats()]),
                      cache_config_info(args, info.block_size, info.num_kv_blocks, config.enable_prefix_caching,
                                        config.kv_cache_dtype),
                      num_engines=getattr(engine, "size", 1), first_label=layout_from_args(args).first_label,
                      show_hidden_for=args.show_hidden_metrics_for_version)
    state = ServerState(
        engine=AsyncEngine(engine), tokenizer=tokenizer, model_path=model, served_names=names,
        max_model_len=info.max_model_len, generation_defaults=defaults, metrics=metrics, args=args,
        chat_template=template, executor=ThreadPoolExecutor(1, thread_name_prefix="cserve-tokenize"),
        max_pending=int(os.environ.get("CSERVE_MAX_PENDING_REQUESTS", "4096")), tokenizer_config=tokenizer_config(tokenizer_dir),
        ranks=ranks)
    if tokenizer is not None:
        from cserve.structured import GrammarService, config_from_args

        state.grammars = GrammarService(tokenizer, info.vocab_size, list(info.eos_token_ids), config_from_args(args))
        if hasattr(engine, "serialize_grammar"):  # data parallelism: grammars travel to the replicas
            engine.serialize_grammar = state.grammars.serialize
    logger.info("Startup: weights %.2f s, KV cache %.2f s, warm-up %.2f s; engine ready in %.2f s; "
                "tokenizer and template %.2f s (alongside)", info.load_seconds, info.kv_alloc_seconds,
                info.warmup_seconds, t_engine, t_tokenizer)
    logger.info("KV cache: %d tokens; maximum concurrency for %d tokens per request: %.2fx",
                info.kv_cache_tokens, info.max_model_len, info.max_concurrency)
    return state


async def _log_stats(state: ServerState, interval: float = 10.0) -> None:
    """vLLM's periodic stats line, while there is work (off with --disable-log-stats)."""
    m = state.metrics
    last = (time.monotonic(), m.prompt_tokens, m.generation_tokens)
    last_prefix = (0, 0)
    last_spec = spec_decode_totals(state.engine.stats())
    while True:
        await asyncio.sleep(interval)
        s = state.engine.stats()
        now = (time.monotonic(), m.prompt_tokens, m.generation_tokens)
        dt = now[0] - last[0]
        busy = now[1:] != last[1:] or s.num_running or s.num_waiting
        if busy:
            queries = s.prefix_cache_queries - last_prefix[0]
            hits = s.prefix_cache_hits - last_prefix[1]
            logger.info("Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                        "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, Prefix cache hit rate: %.1f%%",
                        (now[1] - last[1]) / dt, (now[2] - last[2]) / dt, s.num_running, s.num_waiting,
                        100 * s.kv_cache_usage, 100 * hits / queries if queries else 0.0)
        spec = spec_decode_totals(s)
        line = spec_decode_log_line(last_spec, spec, dt)
        if line:
            logger.info("%s", line)
        last, last_prefix, last_spec = now, (s.prefix_cache_queries, s.prefix_cache_hits), spec


async def _save_metrics(state: ServerState, interval: float = 1.0) -> None:
    """With several API servers: this one's token counters reach the others' /metrics while
    its requests run (finished requests save at once)."""
    while True:
        await asyncio.sleep(interval)
        state.metrics.save()


def _access_log_filter(excluded: list[str]) -> logging.Filter:
    class Exclude(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            path = record.args[2] if isinstance(record.args, tuple) and len(record.args) > 2 else ""
            return not any(str(path).split("?")[0] == p for p in excluded)

    return Exclude()


async def _refresh_ssl(config, files: list[str], interval: float = 1.0) -> None:
    """--enable-ssl-refresh: reload the certificate chain and CA file when they change."""
    stamps = {f: os.stat(f).st_mtime_ns for f in files if f}
    while True:
        await asyncio.sleep(interval)
        now = {f: os.stat(f).st_mtime_ns for f in stamps if os.path.exists(f)}
        if now != stamps:
            stamps = now
            try:
                config.ssl.load_cert_chain(config.ssl_certfile, config.ssl_keyfile)
                if config.ssl_ca_certs:
                    config.ssl.load_verify_locations(config.ssl_ca_certs)
                logger.info("Reloaded the SSL certificates")
            except Exception as e:  # noqa: BLE001 - keep serving with the old context
                logger.error("Could not reload the SSL certificates: %s", e)


def _server_class(drain):
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process would die by
        the signal; a clean shutdown exits with status 0 instead. `drain` runs beside uvicorn's own
        shutdown (which stops accepting and waits for open connections): it ends the requests still
        running at the deadline with an error, so their connections close."""

        async def shutdown(self, sockets=None) -> None:
            task = asyncio.ensure_future(drain())
            try:
                await super().shutdown(sockets)
            finally:
                task.cancel()

        @contextlib.contextmanager
        def capture_signals(self):
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


_H11_DEFAULT_EVENT_SIZE = 4194304


def run_server(args, pending=None, sock=None, share: Optional[tuple[str, int]] = None) -> int:
    """Serves until SIGTERM/SIGINT (exit status 0) or until the engine dies (1). sock: a
    listening socket to serve on (one of several API servers); share: (folder, index) where the
    API servers exchange their metrics."""
    import uvicorn

    state = build_state(args, pending)
    holder: dict[str, Any] = {}
    if share is not None:
        state.metrics.share(*share)

    async def on_startup() -> None:
        config = holder["config"]
        if args.enable_ssl_refresh and config.ssl is not None:
            holder["refresher"] = asyncio.ensure_future(
                _refresh_ssl(config, [args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certs]))
        where = f"unix:{args.uds}" if args.uds else \
            f"{'https' if args.ssl_certfile else 'http'}://{args.host or '0.0.0.0'}:{args.port}"
        logger.info("cserve is serving %s at %s", ", ".join(state.served_names), where)
        if args.grpc_port is not None:
            from cserve.entrypoints.grpc.server import GrpcServer

            holder["grpc"] = GrpcServer(state, api_keys(args))
            await holder["grpc"].start()
        if state.metrics.shared:
            holder["metrics"] = asyncio.ensure_future(_save_metrics(state))
        if args.gateway_address:
            from cserve.gateway import GatewayWorker

            # Registers once this server answers /health; never blocks serving.
            holder["gateway"] = GatewayWorker(state, args)
            await holder["gateway"].start()

    async def on_shutdown() -> None:
        if "gateway" in holder:
            await holder["gateway"].stop()
        if "grpc" in holder:
            await holder["grpc"].stop(grace=0)

    async def drain() -> None:
        """--shutdown-timeout: no new requests (HTTP 503, gRPC refused); running ones get up to
        the timeout to finish; the rest then end with an error."""
        state.draining = True
        if "gateway" in holder:  # the gateway stops routing here first
            await holder["gateway"].stop()
        if "grpc" in holder:
            asyncio.ensure_future(holder["grpc"].stop(grace=args.shutdown_timeout))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + args.shutdown_timeout
        if state.engine.num_in_flight:
            logger.info("Shutting down: waiting up to %.0f s for %d running requests", args.shutdown_timeout,
                        state.engine.num_in_flight)
        while state.engine.num_in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if state.engine.num_in_flight:
            logger.warning("Shutting down: ending %d requests still running after %.0f s with an error",
                           state.engine.num_in_flight, args.shutdown_timeout)
            state.engine.stop(f"the server shut down before the request finished (--shutdown-timeout "
                              f"{args.shutdown_timeout:g} s)")

    app = build_app(state, on_startup, on_shutdown)
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    kwargs: dict[str, Any] = dict(
        host=args.host or "0.0.0.0", port=args.port, uds=args.uds, loop=loop,
        log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
        ssl_keyfile=args.ssl_keyfile, ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs,
        ssl_cert_reqs=args.ssl_cert_reqs, h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
        timeout_graceful_shutdown=args.shutdown_timeout + 5, timeout_keep_alive=5)
    if args.ssl_ciphers:
        kwargs["ssl_ciphers"] = args.ssl_ciphers
    if args.h11_max_incomplete_event_size != _H11_DEFAULT_EVENT_SIZE:
        kwargs["http"] = "h11"  # only the h11 protocol has this limit (httptools is faster otherwise)
    if args.log_config_file:
        kwargs["log_config"] = None  # configured by the CLI from the file
    config = uvicorn.Config(app, **kwargs)
    holder["config"] = config
    if args.disable_access_log_for_endpoints:
        excluded = [p.strip() for p in args.disable_access_log_for_endpoints.split(",") if p.strip()]
        logging.getLogger("uvicorn.access").addFilter(_access_log_filter(excluded))
    server = _server_class(drain)(config)

    def on_dead(reason: str) -> None:
        # vLLM's dead-engine handling: in-flight requests got their errors; stop serving and
        # exit non-zero so a supervisor restarts the server.
        logger.error("The engine is dead (%s); shutting the server down.", reason)
        server.should_exit = True

    state.engine.on_dead = on_dead
    if state.ranks is not None:
        def rank_died(reason: str) -> None:  # on the rank's watcher thread
            loop = state.engine.loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(state.engine.kill, reason)
            else:
                state.engine.engine.kill(reason)

        state.ranks.watch(rank_died)
    try:
        server.run(sockets=[sock] if sock is not None else None)
    finally:
        state.engine.engine.shutdown()  # with tensor parallelism the other ranks return too
        if state.ranks is not None:
            state.ranks.stop()
    return 1 if state.engine.dead_reason is not None else 0
