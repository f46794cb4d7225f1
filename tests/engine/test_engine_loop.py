"""The engine's loop thread: outputs arrive through an eventfd that asyncio waits on."""

import asyncio

import pytest

from cserve import _core


def _params(max_tokens: int) -> _core.SamplingParams:
    p = _core.SamplingParams()
    p.temperature = 0
    p.max_tokens = max_tokens
    p.ignore_eos = True
    return p


def _engine(model_dir: str) -> _core.Engine:
    config = _core.EngineConfig()
    config.model = model_dir
    config.dtype = "float32"
    return _core.Engine(config)


def _run_sync(model_dir, prompts, max_tokens):
    engine = _engine(model_dir)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, _params(max_tokens))
    tokens = {str(i): [] for i in range(len(prompts))}
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    return tokens


async def _run_async(engine, prompts, max_tokens, abort_id=None):
    loop = asyncio.get_running_loop()
    woke = asyncio.Event()
    loop.add_reader(engine.output_fd(), woke.set)
    tokens = {str(i): [] for i in range(len(prompts))}
    finished = {}
    try:
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, _params(max_tokens))
        if abort_id is not None:
            engine.abort(abort_id)
        while len(finished) < len(prompts):
            await asyncio.wait_for(woke.wait(), timeout=60)
            woke.clear()
            for out in engine.drain_outputs():
                tokens[out.request_id] += out.new_token_ids
                if out.finished:
                    finished[out.request_id] = out.finish_reason
    finally:
        loop.remove_reader(engine.output_fd())
    return tokens, finished


def test_loop_outputs_equal_step_outputs(tiny_model_dir):
    prompts = [[1, 2, 3, 4, 5], [9, 8, 7], list(range(10, 40))]
    expected = _run_sync(tiny_model_dir, prompts, 12)
    engine = _engine(tiny_model_dir)
    engine.start_loop()
    try:
        tokens, finished = asyncio.run(_run_async(engine, prompts, 12))
    finally:
        engine.stop_loop()
    assert tokens == expected
    assert set(finished.values()) == {"length"}
    stats = engine.stats()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.generation_tokens == 36


def test_abort_in_loop_frees_blocks(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    free_before = engine.stats().num_free_blocks
    engine.start_loop()
    try:
        tokens, finished = asyncio.run(_run_async(engine, [[1, 2, 3], [4, 5, 6]], 200, abort_id="1"))
    finally:
        engine.stop_loop()
    assert finished["1"] == "abort"
    assert finished["0"] == "length"
    assert engine.stats().num_free_blocks == free_before
    assert not engine.has_unfinished_requests()


def test_step_refused_while_loop_runs(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    engine.start_loop()
    try:
        with pytest.raises(RuntimeError):
            engine.step()
    finally:
        engine.stop_loop()


def test_duplicate_request_id_rejected(tiny_model_dir):
    engine = _engine(tiny_model_dir)
    engine.add_request("x", [1, 2, 3], _params(4))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("x", [1, 2, 3], _params(4))


def test_outputs_arrive_while_the_request_runs(smollm2_model_dir):
    """Each step's outputs wait for the consumer: a drain after a wake-up sees them while later
    steps run. (They used to be taken back into the next step, so with steps of real length a
    streamed request arrived in one piece at its end.)"""
    config = _core.EngineConfig()
    config.model = str(smollm2_model_dir)
    config.dtype = "bfloat16"
    config.max_model_len = 512
    config.kv_cache_memory_bytes = 1 << 26
    config.num_threads = 1  # leaves the other core to this consumer
    engine = _core.Engine(config)
    engine.start_loop()

    async def drains():
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()
        loop.add_reader(engine.output_fd(), woke.set)
        batches = []
        try:
            engine.add_request("r", [1, 2, 3], _params(64))
            while not (batches and batches[-1][-1].finished):
                await asyncio.wait_for(woke.wait(), timeout=60)
                woke.clear()
                outs = engine.drain_outputs()
                if outs:
                    batches.append(outs)
        finally:
            loop.remove_reader(engine.output_fd())
        return batches

    try:
        batches = asyncio.run(drains())
    finally:
        engine.stop_loop()
    assert sum(len(o.new_token_ids) for b in batches for o in b) == 64
    assert len(batches) >= 16, f"64 tokens arrived in only {len(batches)} batches"
