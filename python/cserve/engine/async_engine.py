"""AsyncEngine: the C++ engine runs its loop on its own thread; the asyncio event loop waits
on the engine's eventfd and drains every ready output once per wake-up (not once per token),
handing each request its batch of deltas.

Every request gets an engine id from a counter here, never the client's text, so no client id
can collide with another request; a stream is registered once by add() and removed once by
release(), whatever ends it (the last output, an error, a client gone, a batch that failed)."""

from __future__ import annotations

import asyncio
import itertools
from typing import AsyncIterator, Callable, Optional

from cserve import _core


class EngineDeadError(RuntimeError):
    """The engine was stopped or died; the request cannot be served."""


class EngineRequestError(RuntimeError):
    """The engine failed while computing this request (a step threw); the message says why."""


class RequestStream:
    """The outputs of one request that arrived since its consumer last looked."""

    def __init__(self, engine_id: str, n: int) -> None:
        self.engine_id = engine_id
        self._pending: list = []
        self._event = asyncio.Event()
        self._open = set(range(n))  # completion indices not finished yet
        self.error: Optional[BaseException] = None

    @property
    def finished(self) -> bool:
        """Every choice ended normally (a failed stream raises its error from get() instead)."""
        return not self._open

    @property
    def ended(self) -> bool:
        """Nothing more will come from the engine: finished, or failed."""
        return not self._open or self.error is not None

    def put(self, out) -> None:
        if out.finish_reason == "error":
            self.fail(EngineRequestError(out.error or "the engine failed"))
            return
        self._pending.append(out)
        if out.finished:
            self._open.discard(out.index)
        self._event.set()

    def fail(self, error: BaseException) -> None:
        if self.error is None:
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
    iterate() yields its batches and releases the request when it ends or the consumer goes away."""

    def __init__(self, engine: _core.Engine) -> None:
        self.engine = engine
        self.model_info = engine.model_info()
        self._streams: dict[str, RequestStream] = {}
        self._ids = itertools.count()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.running = False
        self.dead_reason: Optional[str] = None
        self.on_dead: Optional[Callable[[str], None]] = None  # called once when the engine dies

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.engine.start_loop()
        self._loop.add_reader(self.engine.output_fd(), self._drain)
        self.running = True

    def stop(self, reason: str = "the server is shutting down") -> None:
        if not self.running:
            return
        self.running = False
        self._loop.remove_reader(self.engine.output_fd())
        for engine_id in list(self._streams):
            self.engine.abort(engine_id)
        self.engine.stop_loop()
        for stream in self._streams.values():
            stream.fail(EngineDeadError(reason))

    @property
    def loop(self) -> Optional[asyncio.AbstractEventLoop]:
        return self._loop

    def kill(self, reason: str) -> None:
        """The engine is dead now (a tensor-parallel rank exited): every request ends with an
        error and on_dead is called. On the event loop."""
        self.engine.kill(reason)
        self._drain()

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    def _drain(self) -> None:
        for out in self.engine.drain_outputs():
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)
        if self.dead_reason is None and self.engine.is_dead():
            self.dead_reason = self.engine.dead_reason()
            for stream in self._streams.values():
                stream.fail(EngineDeadError(f"the engine is dead: {self.dead_reason}"))
            if self.on_dead is not None:
                self.on_dead(self.dead_reason)

    def add(self, prompt_token_ids: list[int], params: _core.SamplingParams, priority: int = 0,
            cache_salt: str = "") -> RequestStream:
        if not self.running or self.dead_reason is not None:
            raise EngineDeadError(f"the engine is dead: {self.dead_reason}" if self.dead_reason
                                  else "the engine is not running")
        stream = RequestStream(str(next(self._ids)), params.n)
        # add_request validates (raising ValueError); register only what the engine accepted.
        try:
            self.engine.add_request(stream.engine_id, prompt_token_ids, params, priority, cache_salt)
        except _core.EngineDeadError as e:
            raise EngineDeadError(str(e)) from None
        self._streams[stream.engine_id] = stream
        return stream

    def abort(self, stream: RequestStream) -> None:
        """Ends the request early (every choice met a stop string); its stream stays registered
        until the engine's final outputs arrive."""
        self.engine.abort(stream.engine_id)

    def release(self, stream: RequestStream) -> None:
        """Forgets the stream (once; later calls do nothing) and aborts its request if it has
        not finished."""
        if self._streams.pop(stream.engine_id, None) is not None and not stream.ended:
            self.engine.abort(stream.engine_id)

    async def iterate(self, stream: RequestStream) -> AsyncIterator[list]:
        try:
            while True:
                batch = await stream.get()
                yield batch
                if stream.finished:
                    return
        finally:
            self.release(stream)

    def stats(self):
        return self.engine.stats()
