"""How `cserve bench serve` sends one request and times what streams back.

Every backend streams and stamps each chunk with time.perf_counter() as it arrives:

- openai: POST /v1/completions (stream, stream_options.include_usage), the OpenAI fields only
  (plus ignore_eos with --ignore-eos, and --extra-body / the sampling flags);
- vllm: the same endpoint with vLLM's payload (it adds repetition_penalty 1.0);
- openai-chat: POST /v1/chat/completions, the prompt as one user message;
- grpc: cserve.v1.Generation/Generate over grpc.aio (`cserve serve --grpc-port`).

A chunk counts as a token chunk when it carries generated text (chat: content or reasoning;
gRPC: token ids): TTFT ends at the first, E2EL at the last, ITL is the gaps between them. A
role-only first chunk, which some servers send before the prompt is computed, does not start
TTFT; a chunk without text (a finish reason alone) does not move E2EL. The output token count
is the server's (usage, or the gRPC token ids); the metrics count the text with the tokenizer
when a server gives neither.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Optional

from cserve.bench.metrics import RequestRecord

BACKENDS = ("openai", "vllm", "openai-chat", "grpc")
HTTP_TIMEOUT_S = 6 * 3600  # vLLM's: a long benchmark's requests may queue for hours


@dataclass
class RequestInput:
    prompt: str
    prompt_len: int
    output_len: int
    request_id: str = ""


@dataclass
class RequestSettings:
    """What every request of a run carries besides its prompt."""

    model: str
    ignore_eos: bool = False
    logprobs: Optional[int] = None
    extra_body: dict = field(default_factory=dict)  # sampling flags and --extra-body, sent as they are


class _Timer:
    """Token-chunk timestamps -> TTFT, ITL and E2EL of one request; E2EL ends at the last token
    chunk, so that E2EL = TTFT + sum(ITL) for every request, as in vLLM's records."""

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.start = self.last_token = time.perf_counter()
        record.start_time = self.start
        self.parts: list[str] = []

    def token_chunk(self, text: str) -> None:
        now = time.perf_counter()
        if self.parts:
            self.record.itl.append(now - self.last_token)
        else:
            self.record.ttft = now - self.start
        self.last_token = now
        self.parts.append(text)

    def finish(self) -> RequestRecord:
        r = self.record
        r.generated_text = "".join(self.parts)
        r.latency = self.last_token - self.start
        r.success = bool(self.parts) and not r.error
        if not self.parts and not r.error:
            r.error = "no chunk with generated text came back"
        return r


class HttpBackend:
    """An OpenAI-compatible endpoint over one httpx connection pool (no connection limit, so the
    client never queues requests the server could take)."""

    def __init__(self, base_url: str, endpoint: str, headers: dict, settings: RequestSettings) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + endpoint
        key = os.environ.get("OPENAI_API_KEY")
        self.headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **headers}
        self.settings = settings
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_S, connect=30),
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    def payload(self, req: RequestInput) -> dict:
        s = self.settings
        body = {"model": s.model, **self.prompt_fields(req), "stream": True, "stream_options": {"include_usage": True}}
        if s.ignore_eos:
            body["ignore_eos"] = True
        return {**body, **s.extra_body}

    def prompt_fields(self, req: RequestInput) -> dict:
        """The endpoint's own fields: the prompt, the length, ..."""
        raise NotImplementedError

    @staticmethod
    def chunk_text(choice: dict) -> str:
        raise NotImplementedError

    async def send(self, req: RequestInput) -> RequestRecord:
        import httpx

        record = RequestRecord(prompt_len=req.prompt_len)
        headers = {**self.headers, "x-request-id": req.request_id} if req.request_id else self.headers
        timer = _Timer(record)
        try:
            async with self.client.stream("POST", self.url, json=self.payload(req), headers=headers) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    record.error = f"HTTP {response.status_code}: {body[:1000]}"
                    return timer.finish()
                async for line in response.aiter_lines():
                    data = line[len("data:"):].strip() if line.startswith("data:") else ""
                    if data and data != "[DONE]":
                        self._event(json.loads(data), timer)
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            record.error = f"{type(e).__name__}: {e}"
        return timer.finish()

    def _event(self, event: dict, timer: _Timer) -> None:
        if "error" in event:
            timer.record.error = json.dumps(event["error"])
        text = self.chunk_text(event["choices"][0]) if event.get("choices") else None
        if text:
            timer.token_chunk(text)
        usage = event.get("usage")
        if usage:
            timer.record.output_tokens = usage.get("completion_tokens") or timer.record.output_tokens
            timer.record.prompt_len = usage.get("prompt_tokens") or timer.record.prompt_len

    async def reachable(self) -> bool:
        """Whether the server answers at all (any status)."""
        import httpx

        try:
            await self.client.get(self.base_url + "/v1/models", headers=self.headers, timeout=5)
            return True
        except httpx.HTTPError:
            return False

    async def model_names(self) -> list[str]:
        r = await self.client.get(self.base_url + "/v1/models", headers=self.headers, timeout=30)
        r.raise_for_status()
        return [m["id"] for m in r.json().get("data", [])]

    async def close(self) -> None:
        await self.client.aclose()


class CompletionsBackend(HttpBackend):
    vllm_fields = False

    def prompt_fields(self, req: RequestInput) -> dict:
        fields = {"prompt": req.prompt, "max_tokens": req.output_len}
        if self.vllm_fields:
            fields.update(repetition_penalty=1.0, logprobs=self.settings.logprobs)
        elif self.settings.logprobs is not None:
            fields["logprobs"] = self.settings.logprobs
        return fields

    @staticmethod
    def chunk_text(choice: dict) -> str:
        return choice.get("text")


class VllmBackend(CompletionsBackend):
    vllm_fields = True


class ChatBackend(HttpBackend):
    def prompt_fields(self, req: RequestInput) -> dict:
        return {"messages": [{"role": "user", "content": req.prompt}], "max_completion_tokens": req.output_len}

    @staticmethod
    def chunk_text(choice: dict) -> str:
        delta = choice.get("delta") or {}
        return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")


class GrpcBackend:
    """cserve's gRPC API: text prompts, one GenerateResponse per engine step that produced tokens.
    --extra-body keys must be SamplingParams fields of the proto."""

    def __init__(self, target: str, headers: dict, settings: RequestSettings) -> None:
        from cserve.grpc_client import AsyncGenerationClient

        self.settings = settings
        metadata = [(k.lower(), v) for k, v in headers.items()]
        self.client = AsyncGenerationClient(target, api_key=os.environ.get("OPENAI_API_KEY"), metadata=metadata,
                                            timeout=HTTP_TIMEOUT_S)

    async def send(self, req: RequestInput) -> RequestRecord:
        import grpc

        s = self.settings
        record = RequestRecord(prompt_len=req.prompt_len)
        timer = _Timer(record)
        try:
            call = self.client.generate(text=req.prompt, model=s.model, request_id=req.request_id, stream=True,
                                        max_tokens=req.output_len, ignore_eos=s.ignore_eos, logprobs=s.logprobs,
                                        **s.extra_body)
            async for r in call:
                if r.token_ids or r.text:
                    timer.token_chunk(r.text)
                record.output_tokens = (record.output_tokens or 0) + len(r.token_ids)
                if r.HasField("usage"):
                    record.output_tokens = r.usage.completion_tokens
                    record.prompt_len = r.usage.prompt_tokens
        except grpc.aio.AioRpcError as e:
            record.error = f"{e.code().name}: {e.details()}"
        except (TypeError, ValueError) as e:  # a sampling field the proto lacks
            record.error = str(e)
        return timer.finish()

    async def reachable(self) -> bool:
        import asyncio

        try:
            await asyncio.wait_for(self.client.channel.channel_ready(), timeout=5)
            return True
        except asyncio.TimeoutError:
            return False

    async def model_names(self) -> list[str]:
        return [m.id for m in await self.client.list_models()]

    async def close(self) -> None:
        await self.client.close()


def make_backend(name: str, base_url: Optional[str], host: str, port: int, endpoint: Optional[str], headers: dict,
                 settings: RequestSettings):
    """The backend for --backend, at --base-url (or http://HOST:PORT; for grpc HOST:PORT)."""
    if name == "grpc":
        target = (base_url or f"{host}:{port}").split("://", 1)[-1].rstrip("/")
        return GrpcBackend(target, headers, settings)
    classes = {"openai": CompletionsBackend, "vllm": VllmBackend, "openai-chat": ChatBackend}
    if name not in classes:
        raise ValueError(f"--backend {name}: one of {', '.join(BACKENDS)}")
    default_endpoint = "/v1/chat/completions" if name == "openai-chat" else "/v1/completions"
    return classes[name](base_url or f"http://{host}:{port}", endpoint or default_endpoint, headers, settings)
