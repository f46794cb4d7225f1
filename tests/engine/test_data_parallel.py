"""-dp 2: two whole engines (replica processes) behind one server. Greedy answers equal one
engine's, streamed and not, structured outputs included (grammars travel serialized); requests
go to the least loaded replica. (A replica that dies: test_tensor_parallel_engine.py.)"""

from __future__ import annotations

import concurrent.futures
import time

from tests.helpers.server import ServerProcess, child_processes
from tests.helpers.server import process_gone as _gone


def _replicas(server_pid: int) -> list[int]:
    return child_processes(server_pid, "cserve.engine.replica")


def _ask(client, model: str) -> tuple:
    msgs = [{"role": "user", "content": "Tell me about the quick brown fox."}]
    full = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=24)
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, messages=msgs, temperature=0, max_tokens=24, stream=True) if c.choices)
    comp = client.completions.create(model=model, prompt="Hello world", temperature=0, max_tokens=16, n=2, logprobs=2)
    choice = client.completions.create(model=model, prompt="Pick:", max_tokens=10, temperature=0.8, seed=1,
                                       extra_body={"guided_choice": ["alpha", "beta"]}).choices[0].text
    return full.choices[0].message.content, streamed, [c.text for c in comp.choices], choice in ("alpha", "beta")


def test_dp2_answers_like_one_engine_and_spreads_the_load(chat_model_dir, tmp_path):
    import openai

    answers = []
    for dp in (1, 2):
        with ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256", "-dp", str(dp),
                           "--dtype", "float32", log_dir=tmp_path) as server:
            server.wait_ready(timeout=120)
            replicas = _replicas(server.proc.pid)
            assert len(replicas) == (0 if dp == 1 else 2)
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
            answers.append(_ask(client, "m"))
            if dp == 2:
                # Concurrent requests, and the replicas' summed load in /metrics.
                with concurrent.futures.ThreadPoolExecutor(6) as pool:
                    list(pool.map(lambda i: client.completions.create(
                        model="m", prompt=f"Story {i}:", max_tokens=64, extra_body={"ignore_eos": True}), range(6)))
                with server.client() as http:
                    metrics = http.get("/metrics").text
                generated = [line for line in metrics.splitlines()
                             if line.startswith("vllm:generation_tokens_total")]
                assert generated and float(generated[0].rsplit(" ", 1)[1]) >= 6 * 64
                stopped = replicas
    assert answers[0] == answers[1]
    assert answers[1][0] == answers[1][1] and answers[1][3]
    assert all(_gone(pid) for pid in stopped)


def test_requests_go_to_the_least_loaded_replica(chat_model_dir):
    from cserve import _core
    from cserve.engine.data_parallel import DataParallelEngine

    config = _core.EngineConfig()
    config.model = chat_model_dir
    config.num_gpu_blocks_override = 64
    engine = DataParallelEngine(config, 2)
    try:
        params = _core.SamplingParams()
        params.max_tokens = 2000
        params.ignore_eos = True
        engine.add_request("a", [5, 6, 7], params)
        engine.add_request("b", [5, 6, 8], params)
        assert engine.replica_loads() == [1, 1]
        params.n = 2
        engine.add_request("c", [9, 9], params)
        assert sorted(engine.replica_loads()) == [1, 3]
        engine.abort("a")
        engine.abort("b")
        engine.abort("c")
        deadline = time.monotonic() + 30
        while engine.replica_loads() != [0, 0] and time.monotonic() < deadline:
            engine.drain_outputs()
            time.sleep(0.01)
        assert engine.replica_loads() == [0, 0]
    finally:
        engine.shutdown()
