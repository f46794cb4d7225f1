"""grpc.aio server for cserve.v1.Generation, started by `cserve serve --grpc-port N` in the HTTP
server's process and event loop. Requests take the HTTP server's path to the engine: a gRPC
request becomes the equivalent CompletionRequest or ChatCompletionRequest, goes through
prepare_completion / prepare_chat (the same checks, defaults and engine submission), and its
output deltas (serving.run_all) become GenerateResponse messages."""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Optional

import grpc
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError

from cserve.engine import EngineDeadError
from cserve.entrypoints.auth import key_matches
from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest, random_id
from cserve.entrypoints.openai.serving import ChoiceDelta, ServerState, clean_logprob, run_all
from cserve.v1 import generation_pb2 as pb
from cserve.v1 import generation_pb2_grpc as pb_grpc

logger = logging.getLogger("cserve.grpc")

SERVICE = "cserve.v1.Generation"
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")  # reachable without the API key


def _code(e: APIError) -> grpc.StatusCode:
    if e.status == 404:
        return grpc.StatusCode.NOT_FOUND
    if e.status == 401:
        return grpc.StatusCode.UNAUTHENTICATED
    if e.status == 503:
        return grpc.StatusCode.UNAVAILABLE if "shutting down" in e.message else grpc.StatusCode.RESOURCE_EXHAUSTED
    if e.status >= 500:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INVALID_ARGUMENT


def _optional(msg, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _sampling_fields(sp: pb.SamplingParams) -> dict[str, Any]:
    fields = {name: _optional(sp, name) for name in ("temperature", "top_p", "top_k", "min_p", "seed",
                                                     "presence_penalty", "frequency_penalty", "repetition_penalty")}
    fields.update(
        n=sp.n if sp.HasField("n") else 1, stop=list(sp.stop) or None, stop_token_ids=list(sp.stop_token_ids) or None,
        ignore_eos=sp.ignore_eos, min_tokens=sp.min_tokens, include_stop_str_in_output=sp.include_stop_str_in_output,
        skip_special_tokens=sp.skip_special_tokens if sp.HasField("skip_special_tokens") else True,
        logit_bias={str(k): v for k, v in sp.logit_bias.items()} or None,
        allowed_token_ids=list(sp.allowed_token_ids) or None)
    return fields


def _chat_body(chat: pb.Chat, **fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        messages=[{"role": m.role, "content": m.content} for m in chat.messages],
        add_generation_prompt=chat.add_generation_prompt if chat.HasField("add_generation_prompt") else True,
        continue_final_message=chat.continue_final_message,
        chat_template_kwargs=MessageToDict(chat.chat_template_kwargs) if chat.HasField("chat_template_kwargs")
        else None, **fields)


def _logprobs(state: ServerState, entries: list, top: int) -> list:
    out = []
    for e in entries:
        toks = [pb.TokenLogprob(token_id=int(t), logprob=clean_logprob(lp), rank=int(r), token=state.decode_token(int(t)))
                for t, lp, r in zip(e.token_ids[: top + 1], e.logprobs[: top + 1], e.ranks[: top + 1])]
        out.append(pb.PositionLogprobs(chosen=toks[0], top=toks[1:]))
    return out


def _response(state: ServerState, rid: str, d: ChoiceDelta, text: str, token_ids: list, entries: list,
              top: Optional[int]) -> pb.GenerateResponse:
    r = pb.GenerateResponse(request_id=rid, index=d.index, token_ids=token_ids, text=text,
                            finish_reason=d.finish_reason or "")
    if top is not None:
        r.logprobs.extend(_logprobs(state, entries, top))
    if isinstance(d.stop_reason, str):
        r.stop_str = d.stop_reason
    elif isinstance(d.stop_reason, int):
        r.stop_token_id = d.stop_reason
    return r


class GenerationServicer(pb_grpc.GenerationServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _fail(self, context, e: Exception) -> None:
        if isinstance(e, APIError):
            await context.abort(_code(e), e.message)
        if isinstance(e, ValidationError):
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: {first.get('msg')}")
        raise e

    async def Generate(self, request: pb.GenerateRequest, context) -> AsyncIterator[pb.GenerateResponse]:
        from cserve.entrypoints.openai.serving_chat import prepare_chat
        from cserve.entrypoints.openai.serving_completion import prepare_completion

        state = self.state
        rid = request.request_id or random_id("grpc")
        sp = request.sampling_params
        fields = _sampling_fields(sp)
        fields.update(model=request.model or None, stream=request.stream, priority=request.priority)
        if request.HasField("add_special_tokens"):
            fields["add_special_tokens"] = request.add_special_tokens
        max_tokens = _optional(sp, "max_tokens")
        logprobs = _optional(sp, "logprobs")
        which = request.WhichOneof("input")
        try:
            if which is None:
                raise APIError("GenerateRequest needs one of text, token_ids or chat.", 400)
            if which == "chat":
                body = _chat_body(request.chat, max_completion_tokens=max_tokens, logprobs=logprobs is not None,
                                  top_logprobs=logprobs or 0, **fields)
                run, _, _, top, _ = await prepare_chat(state, body, rid)
                runs = [run]
            else:
                prompt = request.text if which == "text" else list(request.token_ids.ids)
                body = CompletionRequest(prompt=prompt, max_tokens=max_tokens, logprobs=logprobs, **fields)
                runs, _ = await prepare_completion(state, body, rid)
                top = logprobs
        except (APIError, ValidationError) as e:
            await self._fail(context, e)
            return
        except EngineDeadError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
            return
        try:
            async for item in self._generate(request, rid, runs, top):
                yield item
        except APIError as e:  # the engine failed this request mid-way
            await self._fail(context, e)

    async def _generate(self, request, rid: str, runs: list, top: Optional[int]) -> AsyncIterator[pb.GenerateResponse]:
        state = self.state
        prompt_ids = runs[0].prompt_ids
        held: Optional[pb.GenerateResponse] = None  # the last response gets the usage
        first = True
        acc: dict[int, list] = {}
        async for deltas in run_all(state, runs):
            for d in deltas:
                if request.stream:
                    r = _response(state, rid, d, d.text, d.token_ids, d.logprobs, top)
                    if first:
                        r.prompt_token_ids.extend(prompt_ids)
                        first = False
                    if held is not None:
                        yield held
                    held = r
                else:
                    texts, ids, entries, _ = acc.setdefault(d.index, [[], [], [], d])
                    texts.append(d.text)
                    ids.extend(d.token_ids)
                    entries.extend(d.logprobs)
                    acc[d.index][3] = d
        if not all(r.done for r in runs):
            return
        if not request.stream:
            for i, index in enumerate(sorted(acc)):
                texts, ids, entries, last = acc[index]
                r = _response(state, rid, last, "".join(texts), ids, entries, top)
                if i == 0:
                    r.prompt_token_ids.extend(prompt_ids)
                if held is not None:
                    yield held
                held = r
        if held is not None:
            run = runs[0]
            held.usage.CopyFrom(pb.Usage(prompt_tokens=len(run.prompt_ids),
                                         completion_tokens=sum(len(c.token_ids) for c in run.choices),
                                         cached_tokens=run.num_cached_tokens))
            yield held

    async def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
        from cserve.entrypoints.openai.serving_chat import render_request

        state = self.state
        try:
            state.check_model(request.model)
            which = request.WhichOneof("input")
            if which == "chat":
                add = request.add_special_tokens if request.HasField("add_special_tokens") else False
                _, ids = await render_request(state, _chat_body(request.chat, add_special_tokens=add), check_length=False)
            elif which == "text":
                add = request.add_special_tokens if request.HasField("add_special_tokens") else True
                ids = await state.tokenize(request.text, add, check_length=False)
            else:
                raise APIError("TokenizeRequest needs text or chat.", 400)
        except (APIError, ValidationError) as e:
            await self._fail(context, e)
        return pb.TokenizeResponse(token_ids=ids, count=len(ids), max_model_len=state.max_model_len)

    async def Detokenize(self, request: pb.DetokenizeRequest, context) -> pb.DetokenizeResponse:
        state = self.state
        try:
            state.check_model(request.model)
            tok = state.require_tokenizer()
            vocab = state.engine.model_info.vocab_size
            bad = [t for t in request.token_ids if t < 0 or t >= vocab]
            if bad:
                raise APIError(f"Token ids {bad[:8]} are out of vocabulary (vocab_size {vocab}).", 400)
        except APIError as e:
            await self._fail(context, e)
        return pb.DetokenizeResponse(text=tok.decode(list(request.token_ids),
                                                     skip_special_tokens=request.skip_special_tokens))

    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.Model(id=name, max_model_len=self.state.max_model_len)
                                             for name in self.state.served_names])

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.ModelInfo:
        state = self.state
        try:
            state.check_model(request.model)
        except APIError as e:
            await self._fail(context, e)
        info = state.engine.model_info
        return pb.ModelInfo(served_model_names=state.served_names, max_model_len=state.max_model_len,
                            vocab_size=info.vocab_size, eos_token_ids=list(info.eos_token_ids),
                            architecture=info.architecture, dtype=info.dtype, block_size=info.block_size,
                            kv_cache_tokens=info.kv_cache_tokens)


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    """--api-key: every call but health and reflection needs "authorization: Bearer <key>"."""

    def __init__(self, keys: list[str]) -> None:
        self.allowed = [f"Bearer {k}".encode() for k in keys]

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Unauthorized")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "Unauthorized")
            yield  # pragma: no cover - makes this an async generator

        self._deny = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.unary_stream_rpc_method_handler(deny_stream)

    async def intercept_service(self, continuation, details):
        if details.method.startswith(_OPEN_PREFIXES):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        given = metadata.get("authorization")
        if isinstance(given, str) and key_matches(given.encode(), self.allowed):
            return await continuation(details)
        return self._deny_stream if details.method.endswith("/Generate") else self._deny


class GrpcServer:
    def __init__(self, state: ServerState, api_keys: list[str]) -> None:
        self.state = state
        self.api_keys = api_keys
        self.server: Optional[grpc.aio.Server] = None
        self.health = None

    async def start(self) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        args = self.state.args
        interceptors = [_AuthInterceptor(self.api_keys)] if self.api_keys else []
        self.server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_GenerationServicer_to_server(GenerationServicer(self.state), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.server)
        address = f"{args.host or '0.0.0.0'}:{args.grpc_port}"
        if args.ssl_certfile:
            self.server.add_secure_port(address, _credentials(args))
        else:
            self.server.add_insecure_port(address)
        await self.server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("gRPC (cserve.v1.Generation) at %s%s", address, " with TLS" if args.ssl_certfile else "")

    async def stop(self, grace: float = 2.0) -> None:
        """Refuses new calls at once; running ones get `grace` seconds."""
        if self.server is None:
            return
        from grpc_health.v1 import health_pb2

        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace=grace)


def _credentials(args) -> grpc.ServerCredentials:
    import ssl

    def read(path: Optional[str]) -> Optional[bytes]:
        return open(path, "rb").read() if path else None

    require_client = args.ssl_cert_reqs == ssl.CERT_REQUIRED
    return grpc.ssl_server_credentials([(read(args.ssl_keyfile), read(args.ssl_certfile))],
                                       root_certificates=read(args.ssl_ca_certs), require_client_auth=require_client)
