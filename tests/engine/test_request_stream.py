"""RequestStream, the per-request queue between the engine's outputs and a consumer: an error
that arrives behind outputs still reaches the consumer (never a silent early end)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from cserve.engine.async_engine import EngineRequestError, RequestStream


def output(index: int, finish_reason=None, error: str = "") -> SimpleNamespace:
    return SimpleNamespace(index=index, finish_reason=finish_reason, finished=finish_reason is not None,
                           error=error, new_token_ids=[1])


def test_an_error_behind_outputs_is_raised_after_them():
    async def run() -> list:
        stream = RequestStream("0", n=2)
        stream.put(output(0))
        stream.put(output(1))
        stream.put(output(0, "error", "boom"))
        got = await stream.get()
        assert [o.index for o in got] == [0, 1]
        assert not stream.finished and stream.ended
        with pytest.raises(EngineRequestError, match="boom"):
            await stream.get()
        return got

    asyncio.run(run())


def test_finished_only_when_every_choice_ended():
    async def run() -> None:
        stream = RequestStream("0", n=2)
        stream.put(output(0, "stop"))
        assert not stream.finished
        stream.put(output(1, "length"))
        assert stream.finished and stream.ended
        assert len(await stream.get()) == 2

    asyncio.run(run())


def test_iterate_raises_an_error_that_came_with_tokens(model_zoo, monkeypatch):
    """A real engine whose third step fails: the tokens of the first two and the error arrive in
    one drain; iterate() yields the tokens, then raises (it used to end quietly)."""
    import time

    from cserve import _core
    from cserve.engine import AsyncEngine

    monkeypatch.setenv("CSERVE_TEST_FAIL_STEPS", "from_step:2")
    config = _core.EngineConfig()
    config.model = model_zoo.get("llama").path
    config.dtype = "float32"
    config.num_gpu_blocks_override = 64
    config.num_threads = 1
    params = _core.SamplingParams()
    params.temperature = 0
    params.max_tokens = 30
    params.ignore_eos = True

    async def run() -> list:
        engine = AsyncEngine(_core.Engine(config))
        engine.start()
        try:
            stream = engine.add([5, 6, 7], params)
            time.sleep(0.5)  # the loop thread runs its steps; outputs wait for one drain
            got = []
            with pytest.raises(EngineRequestError, match="injected step failure"):
                async for batch in engine.iterate(stream):
                    got.extend(t for o in batch for t in o.new_token_ids)
            assert engine.num_in_flight == 0
            return got
        finally:
            engine.stop()

    assert len(asyncio.run(run())) == 2
