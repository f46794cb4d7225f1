"""A small typed client for cserve's gRPC API (cserve.v1.Generation).

    from cserve.grpc_client import GenerationClient

    with GenerationClient("localhost:50051", api_key="sk-...") as client:
        for r in client.generate(text="Hello", max_tokens=16, temperature=0):
            print(r.text, end="", flush=True)
        result = client.complete(messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
        print(result.texts[0], result.finish_reasons[0], result.usage.completion_tokens)

`AsyncGenerationClient` is the same over `grpc.aio`, for asyncio code (`cserve bench serve
--backend grpc` uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterator, Optional, Sequence

import grpc
from google.protobuf.struct_pb2 import Struct

from cserve.v1 import generation_pb2 as pb
from cserve.v1 import generation_pb2_grpc as pb_grpc

_SAMPLING_FIELDS = {f.name for f in pb.SamplingParams.DESCRIPTOR.fields}


@dataclass
class GenerateResult:
    """Every completion of one request, joined from its responses."""

    request_id: str = ""
    texts: dict[int, str] = field(default_factory=dict)
    token_ids: dict[int, list[int]] = field(default_factory=dict)
    logprobs: dict[int, list[pb.PositionLogprobs]] = field(default_factory=dict)
    finish_reasons: dict[int, str] = field(default_factory=dict)
    stop_reasons: dict[int, Any] = field(default_factory=dict)
    prompt_token_ids: list[int] = field(default_factory=list)
    usage: Optional[pb.Usage] = None


def _channel(grpc_module, target: str, root_certificates: Optional[bytes], options: Sequence[tuple[str, Any]]):
    """A channel from `grpc` or `grpc.aio` (the same two constructors): TLS when root_certificates is given."""
    if root_certificates is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        return grpc_module.secure_channel(target, creds, options=list(options))
    return grpc_module.insecure_channel(target, options=list(options))


def _auth_metadata(api_key: Optional[str]) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")] if api_key else []


def _chat(messages: Sequence[dict], add_generation_prompt: Optional[bool] = None,
          continue_final_message: bool = False, chat_template_kwargs: Optional[dict] = None) -> pb.Chat:
    chat = pb.Chat(messages=[pb.ChatMessage(role=m["role"], content=m.get("content") or "") for m in messages],
                   continue_final_message=continue_final_message)
    if add_generation_prompt is not None:
        chat.add_generation_prompt = add_generation_prompt
    if chat_template_kwargs:
        kwargs = Struct()
        kwargs.update(chat_template_kwargs)
        chat.chat_template_kwargs.CopyFrom(kwargs)
    return chat


def build_request(text: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                  messages: Optional[Sequence[dict]] = None, *, model: str = "", stream: bool = True,
                  request_id: str = "", priority: int = 0, add_special_tokens: Optional[bool] = None,
                  add_generation_prompt: Optional[bool] = None, continue_final_message: bool = False,
                  chat_template_kwargs: Optional[dict] = None, **sampling: Any) -> pb.GenerateRequest:
    """Builds a GenerateRequest; `sampling` takes SamplingParams' fields (max_tokens, temperature, ...)."""
    unknown = set(sampling) - _SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameters: {sorted(unknown)}")
    if sum(x is not None for x in (text, token_ids, messages)) != 1:
        raise ValueError("give exactly one of text, token_ids and messages")
    req = pb.GenerateRequest(model=model, request_id=request_id, stream=stream, priority=priority,
                             sampling_params=pb.SamplingParams(**{k: v for k, v in sampling.items()
                                                                  if v is not None}))
    if text is not None:
        req.text = text
    elif token_ids is not None:
        req.token_ids.ids.extend(token_ids)
    else:
        req.chat.CopyFrom(_chat(messages, add_generation_prompt, continue_final_message, chat_template_kwargs))
    if add_special_tokens is not None:
        req.add_special_tokens = add_special_tokens
    return req


class GenerationClient:
    """A channel to `cserve serve --grpc-port`. `root_certificates` (PEM bytes) turns on TLS;
    `api_key` is sent as "authorization: Bearer <key>"."""

    request = staticmethod(build_request)

    def __init__(self, target: str, api_key: Optional[str] = None, root_certificates: Optional[bytes] = None,
                 timeout: Optional[float] = None, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.channel = _channel(grpc, target, root_certificates, options)
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.metadata = _auth_metadata(api_key)
        self.timeout = timeout

    def _kw(self) -> dict:
        return {"metadata": self.metadata, "timeout": self.timeout}

    def generate(self, text: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                 messages: Optional[Sequence[dict]] = None, **kw: Any) -> Iterator[pb.GenerateResponse]:
        """The responses as they come (a stream of deltas unless stream=False). Cancel the
        iterator (`.cancel()`) to abort the request."""
        return self.stub.Generate(self.request(text, token_ids, messages, **kw), **self._kw())

    def complete(self, text: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                 messages: Optional[Sequence[dict]] = None, **kw: Any) -> GenerateResult:
        """Runs a request to the end and joins its responses."""
        out = GenerateResult()
        for r in self.generate(text, token_ids, messages, **kw):
            out.request_id = r.request_id
            out.texts[r.index] = out.texts.get(r.index, "") + r.text
            out.token_ids.setdefault(r.index, []).extend(r.token_ids)
            out.logprobs.setdefault(r.index, []).extend(r.logprobs)
            if r.prompt_token_ids:
                out.prompt_token_ids = list(r.prompt_token_ids)
            if r.finish_reason:
                out.finish_reasons[r.index] = r.finish_reason
                which = r.WhichOneof("stop_reason")
                out.stop_reasons[r.index] = getattr(r, which) if which else None
            if r.HasField("usage"):
                out.usage = r.usage
        return out

    def tokenize(self, text: Optional[str] = None, messages: Optional[Sequence[dict]] = None, *, model: str = "",
                 add_special_tokens: Optional[bool] = None, **chat: Any) -> list[int]:
        req = pb.TokenizeRequest(model=model)
        if (text is None) == (messages is None):
            raise ValueError("give exactly one of text and messages")
        if text is not None:
            req.text = text
        else:
            req.chat.CopyFrom(_chat(messages, **chat))
        if add_special_tokens is not None:
            req.add_special_tokens = add_special_tokens
        return list(self.stub.Tokenize(req, **self._kw()).token_ids)

    def detokenize(self, token_ids: Sequence[int], *, model: str = "", skip_special_tokens: bool = False) -> str:
        req = pb.DetokenizeRequest(model=model, token_ids=list(token_ids), skip_special_tokens=skip_special_tokens)
        return self.stub.Detokenize(req, **self._kw()).text

    def list_models(self) -> list[pb.Model]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), **self._kw()).models)

    def model_info(self, model: str = "") -> pb.ModelInfo:
        return self.stub.GetModelInfo(pb.GetModelInfoRequest(model=model), **self._kw())

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "GenerationClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncGenerationClient:
    """GenerationClient's channel over grpc.aio; create it inside the running event loop.
    `metadata` adds (key, value) pairs to every call."""

    def __init__(self, target: str, api_key: Optional[str] = None, root_certificates: Optional[bytes] = None,
                 timeout: Optional[float] = None, options: Sequence[tuple[str, Any]] = (),
                 metadata: Sequence[tuple[str, str]] = ()) -> None:
        import grpc.aio

        self.channel = _channel(grpc.aio, target, root_certificates, options)
        self.stub = pb_grpc.GenerationStub(self.channel)
        self.metadata = _auth_metadata(api_key) + list(metadata)
        self.timeout = timeout

    def generate(self, text: Optional[str] = None, token_ids: Optional[Sequence[int]] = None,
                 messages: Optional[Sequence[dict]] = None, **kw: Any) -> AsyncIterator[pb.GenerateResponse]:
        """The responses as they come; `.cancel()` on the returned call aborts the request."""
        return self.stub.Generate(build_request(text, token_ids, messages, **kw), metadata=self.metadata,
                                  timeout=self.timeout)

    async def list_models(self) -> list[pb.Model]:
        reply = await self.stub.ListModels(pb.ListModelsRequest(), metadata=self.metadata, timeout=self.timeout)
        return list(reply.models)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncGenerationClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
