"""AsyncEngine: the C++ engine runs its loop on its own thread; the asyncio event loop waits
on the engine's eventfd and drains every ready output once per wake-up (not once per token),
handing each request its batch of deltas."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

from cserve import _core


class EngineDeadError(RuntimeError):
    """The engine was stopped; the request cannot be served."""


class RequestStream:
    """The outputs of one request that arrived since its consumer last looked."""

    def __init__(self, request_id: str, n: int) -> None:
        self.request_id = request_id
        self._pending: list = []
        self._event = asyncio.Event()
        self._open = set(range(n))  # completion indices not finished yet
        self.error: Optional[BaseException] = None

    @property
    def finished(self) -> bool:
        return not self._open

    def put(self, out) -> None:
        self._pending.append(out)
        if out.finished:
            self._open.discard(out.index)
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._event.set()

    async def get(self) -> list:
        while not self._pending:
            if self.error is not None:
                raise self.error
            await self._event.wait()
            self._event.clear()
        batch, self._pending = self._pending, []
        return batch


class AsyncEngine:
    """Owns a started engine loop. add() submits a request and returns its RequestStream;
    iterate() yields its batches and aborts the request if the consumer goes away early."""

    def __init__(self, engine: _core.Engine) -> None:
        self.engine = engine
        self.model_info = engine.model_info()
        self._streams: dict[str, RequestStream] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.running = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.engine.start_loop()
        self._loop.add_reader(self.engine.output_fd(), self._drain)
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._loop.remove_reader(self.engine.output_fd())
        for rid in list(self._streams):
            self.engine.abort(rid)
        self.engine.stop_loop()
        for stream in self._streams.values():
            stream.fail(EngineDeadError("the server is shutting down"))

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def _drain(self) -> None:
        for out in self.engine.drain_outputs():
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)

    def add(self, request_id: str, prompt_token_ids: list[int], params: _core.SamplingParams,
            priority: int = 0, cache_salt: str = "") -> RequestStream:
        if not self.running:
            raise EngineDeadError("the engine is not running")
        stream = RequestStream(request_id, params.n)
        # add_request validates (raising ValueError); register only what the engine accepted.
        self.engine.add_request(request_id, prompt_token_ids, params, priority, cache_salt)
        self._streams[request_id] = stream
        return stream

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)

    async def iterate(self, stream: RequestStream) -> AsyncIterator[list]:
        try:
            while True:
                batch = await stream.get()
                yield batch
                if stream.finished:
                    return
        finally:
            self._streams.pop(stream.request_id, None)
            if not stream.finished:
                self.engine.abort(stream.request_id)

    def stats(self):
        return self.engine.stats()
