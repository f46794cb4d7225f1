"""-tp 2 end to end: the engine (rank 0) in this process, rank 1 a process of its own, meeting in
shared memory. Greedy tokens equal -tp 1's and prompt / sample logprobs agree within 1e-4 in
float32, through chunked prefill, prefix-cache hits and n > 1 forks (KV block copies on every
rank); the server with -tp 2 answers as with -tp 1; a rank that dies ends the requests with an
error, turns /health to 503, stops the server non-zero and leaves no rank process behind."""

from __future__ import annotations

import os
import re
import signal
import time

import numpy as np
import pytest

from cserve import LLM, SamplingParams
from tests.helpers.server import ServerProcess, child_processes, process_gone

PROMPTS = [[5, 17, 99, 23, 4, 250, 7, 7, 31, 64, 12, 140, 3, 77, 201, 9, 46, 58, 111, 6] * 3,
           [9, 8, 7, 6, 5, 4, 3], [200 - i for i in range(40)]]


def _llm(path: str, tp: int, **kw) -> LLM:
    return LLM(path, dtype="float32", tensor_parallel_size=tp, num_gpu_blocks_override=128, max_model_len=256,
               num_threads=1, **kw)


def _run(llm: LLM) -> list:
    sp = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3, prompt_logprobs=2, n=2, seed=1)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], sp, use_tqdm=False)
    # A prefix-cache hit (requests asking for prompt logprobs compute the whole prompt).
    outs += llm.generate([{"prompt_token_ids": PROMPTS[0]}],
                         SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=3, n=2),
                         use_tqdm=False)
    return outs


def _logprob_rows(out) -> list[np.ndarray]:
    rows = [np.array(sorted(lp.logprob for lp in d.values())) for d in (out.prompt_logprobs or [None])[1:]]
    for c in out.outputs:
        rows += [np.array(sorted(lp.logprob for lp in d.values())) for d in c.logprobs]
    return rows


def _assert_same(got: list, want: list) -> None:
    """Identical greedy tokens; prompt and sample logprobs within 1e-4."""
    for g, w in zip(got, want):
        assert [c.token_ids for c in g.outputs] == [c.token_ids for c in w.outputs]
        for a, b in zip(_logprob_rows(g), _logprob_rows(w)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_tp2_equals_tp1(model_zoo, family):
    built = model_zoo.get(family)
    one = _llm(built.path, 1, max_num_batched_tokens=32, enable_chunked_prefill=True)
    want = _run(one)
    one.shutdown()
    two = _llm(built.path, 2, max_num_batched_tokens=32, enable_chunked_prefill=True)
    got = _run(two)
    two.shutdown()
    _assert_same(got, want)
    assert got[-1].num_cached_tokens > 0


def test_llm_refuses_what_it_cannot_split(model_zoo):
    with pytest.raises(ValueError, match=r"Total number of attention heads \(8\) must be divisible"):
        _llm(model_zoo.get("llama").path, 3)
    with pytest.raises(ValueError, match="'uni' runs one process"):
        _llm(model_zoo.get("llama").path, 2, distributed_executor_backend="uni")
    with pytest.raises(NotImplementedError, match="'external_launcher' is not supported yet"):
        _llm(model_zoo.get("llama").path, 2, distributed_executor_backend="external_launcher")


def _rank_processes(server_pid: int) -> list[int]:
    return child_processes(server_pid, "tensor_parallel_worker")


_gone = process_gone


def test_server_split_answers_like_whole(chat_model_dir, tmp_path):
    """The server with -tp 2, -pp 2 and both answers as with one rank."""
    import openai

    answers, ranks = [], []
    for flags in (["-tp", "1"], ["-tp", "2"], ["-pp", "2"], ["-tp", "2", "-pp", "2"]):
        with ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256", *flags,
                           "--dtype", "float32", log_dir=tmp_path) as server:
            server.wait_ready(timeout=120)
            mine = _rank_processes(server.proc.pid)
            sizes = dict(zip(flags[::2], map(int, flags[1::2])))
            assert len(mine) == sizes.get("-tp", 1) * sizes.get("-pp", 1) - 1
            ranks += mine
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
            msgs = [{"role": "user", "content": "Tell me about the quick brown fox."}]
            full = client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=24)
            streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="m", messages=msgs, temperature=0, max_tokens=24, stream=True) if c.choices)
            comp = client.completions.create(model="m", prompt="Hello world", temperature=0, max_tokens=16, n=2,
                                             logprobs=2, seed=3)
            answers.append((full.choices[0].message.content, streamed, [c.text for c in comp.choices]))
    assert answers[0] == answers[1] == answers[2] == answers[3]
    assert answers[0][0] == answers[0][1]
    assert all(_gone(pid) for pid in ranks)  # the ranks returned when their server stopped


def stream_until_killed(http, pid: int) -> list[str]:
    """A streamed completion long enough to be running (seconds of decode steps) when `pid` is
    killed, once the first chunk came; the rest of the stream."""
    body = {"model": "m", "prompt": "Hello", "max_tokens": 8000, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        os.kill(pid, signal.SIGKILL)
        return list(lines)


@pytest.mark.parametrize("flag,marker,count,logged", [
    # Whichever sees it first names the rank: the rank's watcher, or rank 0's collective.
    ("-tp", "tensor_parallel_worker", 1, r"parallel rank 1 exited|rank 1 has exited"),
    ("-dp", "cserve.engine.replica", 2, r"data-parallel replica 0 exited"),
], ids=["tp-rank", "dp-replica"])
def test_a_dead_rank_stops_the_server(chat_model_dir, tmp_path, flag, marker, count, logged):
    """A tensor-parallel rank, or a data-parallel replica, killed mid-stream."""
    import httpx

    server = ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "8192", flag, "2",
                           log_dir=tmp_path)
    try:
        server.wait_ready(timeout=120)
        ranks = child_processes(server.proc.pid, marker)
        assert len(ranks) == count
        with server.client() as http:
            assert http.get("/health").status_code == 200
            rest = stream_until_killed(http, ranks[0])
            # The running request ends with an error event, then [DONE].
            assert any('"error"' in line for line in rest), rest[-3:]
            statuses = []
            while server.proc.poll() is None:
                try:
                    statuses.append(http.get("/health").status_code)
                except httpx.TransportError:
                    break
                time.sleep(0.02)
        assert server.proc.wait(timeout=60) != 0
        assert set(statuses) <= {503}, statuses  # after the error, never healthy again
        assert re.search(logged, server.log())
    finally:
        server.stop()
    assert all(_gone(pid) for pid in ranks)


def test_ranks_idle_longer_than_the_timeout(model_zoo):
    """The group's timeout bounds a step, not the wait for the next one: ranks idle past it."""
    from cserve import _core
    from cserve.engine.tensor_parallel import start_engine

    config = _core.EngineConfig()
    config.model = model_zoo.get("llama").path
    config.dtype = "float32"
    config.num_gpu_blocks_override = 64
    config.tensor_parallel_size = 2
    config.tensor_parallel_timeout = 1.0
    engine, ranks = start_engine(config)
    try:
        time.sleep(2.5)
        params = _core.SamplingParams()
        params.temperature = 0
        params.max_tokens = 4
        engine.add_request("a", [5, 6, 7, 8], params)
        outs = []
        while engine.has_unfinished_requests():
            outs += engine.step()
        assert outs[-1].finish_reason == "length" and not engine.is_dead()
    finally:
        engine.shutdown()
        ranks.stop()


@pytest.mark.parametrize("family,tp,pp", [("qwen3", 1, 2), ("llama", 2, 2)], ids=["pp2", "tp2-pp2"])
def test_pipeline_equals_one_rank(model_zoo, family, tp, pp):
    """-pp 2 through LLM: the engine is stage 0 (embedding and the first layer), a process of its
    own stage 1 (the last layer and the logits); with -tp 2 too, four ranks."""
    built = model_zoo.get(family)
    one = _llm(built.path, 1, max_num_batched_tokens=32, enable_chunked_prefill=True)
    want = _run(one)
    one.shutdown()
    split = LLM(built.path, dtype="float32", tensor_parallel_size=tp, pipeline_parallel_size=pp,
                num_gpu_blocks_override=128, max_model_len=256, num_threads=1, max_num_batched_tokens=32,
                enable_chunked_prefill=True)
    got = _run(split)
    split.shutdown()
    _assert_same(got, want)


def test_tp2_over_gloo_equals_tp2_over_shm(model_zoo):
    """EngineConfig.tensor_parallel_store: the ranks meet over gloo's TCP transport instead of
    shared memory (the field travels to the rank process with the rest of the config). Two ranks
    sum alike either way, so the greedy tokens are the same."""
    import socket

    from cserve import _core
    from cserve.engine.tensor_parallel import start_engine

    def greedy(store: str) -> dict:
        config = _core.EngineConfig()
        for name, value in dict(model=model_zoo.get("llama").path, dtype="float32", num_gpu_blocks_override=64,
                                num_threads=1, tensor_parallel_size=2, tensor_parallel_timeout=30.0,
                                tensor_parallel_store=store).items():
            setattr(config, name, value)
        engine, ranks = start_engine(config)
        try:
            params = _core.SamplingParams()
            params.temperature = 0
            params.max_tokens = 8
            params.ignore_eos = True
            for i, prompt in enumerate(PROMPTS):
                engine.add_request(str(i), prompt, params)
            tokens: dict = {}
            deadline = time.monotonic() + 60
            while engine.has_unfinished_requests() and time.monotonic() < deadline:
                for out in engine.step():
                    tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
            assert not engine.has_unfinished_requests() and not engine.is_dead()
            return tokens
        finally:
            engine.shutdown()
            ranks.stop()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    want = greedy("")
    assert greedy(f"127.0.0.1:{port}") == want and all(len(t) == 8 for t in want.values())


def test_a_second_engine_gets_the_cores_back(model_zoo):
    """Rank 0's thread is pinned to its share while its engine runs, and unpinned when the ranks
    stop, so an engine started next in the same thread splits all the cores again."""
    from cserve import _core
    from cserve.engine.tensor_parallel import start_engine

    before = os.sched_getaffinity(0)
    config = _core.EngineConfig()
    config.model = model_zoo.get("llama").path
    config.num_gpu_blocks_override = 32
    config.pipeline_parallel_size = 2
    for _ in range(2):
        engine, ranks = start_engine(config)
        if len(before) > 1:
            assert os.sched_getaffinity(0) < before
        engine.shutdown()
        ranks.stop()
        assert os.sched_getaffinity(0) == before
