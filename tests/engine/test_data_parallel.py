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
                # One series per replica (vLLM's engine label), both of which served.
                generated = {line.split('engine="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
                             for line in metrics.splitlines() if line.startswith("vllm:generation_tokens_total")}
                assert set(generated) == {"0", "1"} and min(generated.values()) > 0
                assert sum(generated.values()) >= 6 * 64
                running = [line for line in metrics.splitlines() if line.startswith("vllm:num_requests_running{")]
                assert len(running) == 2
                assert metrics.count("# TYPE vllm:e2e_request_latency_seconds histogram") == 1
                assert 'vllm:e2e_request_latency_seconds_count{model_name="m",engine="1"}' in metrics
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


def _engine_series(metrics: str, name: str) -> dict:
    return {line.split('engine="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines() if line.startswith(name + "{")}


def test_a_headless_node_serves_the_head_nodes_front_end(chat_model_dir, tmp_path):
    """vLLM's two-node recipe on one host: the head runs replica 0 and the API server, a headless
    node runs replica 1 and connects to the head's RPC port; both serve; stopping the head ends
    the headless node too."""
    import subprocess
    import sys

    import openai

    from tests.helpers.server import _pythonpath, free_port

    rpc = str(free_port())
    common = ["--max-model-len", "256", "-dp", "2", "-dpl", "1", "-dpa", "127.0.0.1", "-dpp", rpc]
    env = {**__import__("os").environ, "PYTHONPATH": _pythonpath(), "CSERVE_NUM_THREADS": "1"}
    log = open(tmp_path / "headless.log", "wb")
    # The headless node first: its replica waits for the head.
    node = subprocess.Popen([sys.executable, "-m", "cserve.cli.main", "serve", chat_model_dir, "--headless",
                             *common, "-dpr", "1"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with ServerProcess(chat_model_dir, "--served-model-name", "m", *common, log_dir=tmp_path) as head:
            head.wait_ready(timeout=120)
            assert len(_replicas(head.proc.pid)) == 1 and len(_replicas(node.pid)) == 1
            client = openai.OpenAI(base_url=head.base_url + "/v1", api_key="x", max_retries=0)
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                texts = list(pool.map(lambda i: client.completions.create(
                    model="m", prompt=f"Story {i}:", max_tokens=32, extra_body={"ignore_eos": True}), range(4)))
            assert all(t.usage.completion_tokens == 32 for t in texts)
            with head.client() as http:
                served = _engine_series(http.get("/metrics").text, "vllm:generation_tokens_total")
            assert set(served) == {"0", "1"} and min(served.values()) > 0
        assert node.wait(timeout=60) == 0  # the head went away: the node's replica returned
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        log.close()


def test_hybrid_load_balancing_labels_the_nodes_own_ranks(chat_model_dir, tmp_path):
    """-dp 2 -dpl 1 -dpr 1 (hybrid, as vLLM infers it): this node serves its one replica, rank 1."""
    with ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256", "-dp", "2", "-dpl", "1",
                       "-dpr", "1", log_dir=tmp_path) as server:
        server.wait_ready(timeout=120)
        with server.client() as http:
            r = http.post("/v1/completions", json={"model": "m", "prompt": "Hi", "max_tokens": 3})
            assert r.status_code == 200
            served = _engine_series(http.get("/metrics").text, "vllm:generation_tokens_total")
        assert served == {"1": 3.0}


def test_prefix_aware_and_round_robin_placement(chat_model_dir):
    from cserve import _core
    from cserve.engine.data_parallel import DataParallelEngine

    config = _core.EngineConfig()
    config.model = chat_model_dir
    config.num_gpu_blocks_override = 64
    config.block_size = 16
    params = _core.SamplingParams()
    params.max_tokens = 2000
    params.ignore_eos = True
    shared = list(range(5, 5 + 48))  # three full blocks
    for placement in ("prefix_aware", "round_robin", "least_loaded"):
        engine = DataParallelEngine(config, 2, placement=placement)
        try:
            engine.add_request("a", shared + [1], params)
            engine.add_request("b", shared + [2], params)  # least loaded: the other replica
            loads = engine.replica_loads()
            assert loads == ([2, 0] if placement == "prefix_aware" else [1, 1]), placement
            engine.add_request("c", [9, 9, 9], params)
            if placement == "round_robin":
                assert engine.replica_loads() == [2, 1]
            for rid in "abc":
                engine.abort(rid)
        finally:
            engine.shutdown()


def test_front_ends_sharing_a_replica_keep_their_requests_apart(chat_model_dir, tmp_path):
    """Two front ends (as --api-server-count 2 runs them) on one replica, each numbering its
    requests from 0: the same ids never meet in the replica, and each gets its own outputs."""
    import os
    import secrets
    import threading

    from cserve import _core
    from cserve.engine.data_parallel import DataParallelEngine
    from cserve.engine.tensor_parallel import start_child

    config = _core.EngineConfig()
    config.model = chat_model_dir
    config.num_gpu_blocks_override = 64
    fronts = [str(tmp_path / f"front{i}") for i in range(2)]
    env = {**os.environ, "CSERVE_REPLICA_KEY": secrets.token_bytes(16).hex()}
    os.environ["CSERVE_REPLICA_KEY"] = env["CSERVE_REPLICA_KEY"]
    engines: list = [None, None]

    def connect(i: int) -> None:
        engines[i] = DataParallelEngine(config, 1, local=0, address=fronts[i])

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    replica = start_child("cserve.engine.replica", ["0", ",".join(fronts)], None, config, env)
    try:
        for t in threads:
            t.join(timeout=120)
        params = _core.SamplingParams()
        params.temperature = 0
        params.ignore_eos = True
        for i, engine in enumerate(engines):
            params.max_tokens = 5 + i
            engine.add_request("0", [5, 6, 7], params)  # the same id on both front ends
        got = [[], []]
        deadline = time.monotonic() + 60
        while not all(got[i] and got[i][-1].finished for i in range(2)) and time.monotonic() < deadline:
            for i, engine in enumerate(engines):
                got[i] += engine.drain_outputs()
            time.sleep(0.01)
        for i in range(2):
            assert {o.request_id for o in got[i]} == {"0"}
            assert sum(len(o.new_token_ids) for o in got[i]) == 5 + i and got[i][-1].finish_reason == "length"
    finally:
        for engine in engines:
            if engine is not None:
                engine.shutdown()
        os.environ.pop("CSERVE_REPLICA_KEY", None)
        replica.wait(timeout=30)
