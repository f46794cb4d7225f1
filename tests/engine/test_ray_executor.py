"""--distributed-executor-backend ray and --data-parallel-backend ray, on a Ray cluster of two
"nodes" on this host (a head and a worker, one CPU each, started by the module fixture). Ranks
1..N-1 (or the replicas) are Ray actors: -tp 2 gives -tp 2 over processes' greedy tokens and
logprobs, on one node (shared memory) and across nodes (gloo over TCP, where the build has it);
-pp 2 too; two replicas on two nodes both serve requests (front end on TCP); a killed actor makes
the engine dead like a killed process; everything Ray held is gone at shutdown; without Ray the
flag says how to install it."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cserve import LLM, _core
from cserve.engine.ray_executor import INSTALL_HINT

from tests.engine.test_engine_loop import _params
from tests.engine.test_tensor_parallel_engine import _assert_same, _run
from tests.helpers.server import ServerProcess, _pythonpath

try:
    import ray
except ImportError:  # the cluster's tests skip; the install hint's test runs
    ray = None

HAS_GLOO = hasattr(_core.EngineConfig(), "tensor_parallel_store")
ONE_NODE = {"CSERVE_RAY_CPUS_PER_RANK": "0.5"}  # both bundles fit on the driver's node (PACK)
TWO_NODES = {"CSERVE_RAY_CPUS_PER_RANK": "1"}  # one CPU per node: the second bundle is on the other node


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(*args: str, temp: str, log: Path) -> subprocess.Popen:
    """`ray start ... --block`: the node lives as long as this process (SIGTERM stops its node). Its
    own temp dir, so that no address of this cluster is left where `ray.init()` looks."""
    cli = str(Path(sys.executable).parent / "ray")
    return subprocess.Popen([cli, "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                             "--disable-usage-stats", "--temp-dir", temp, *args], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of that node is left (its own process group)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A head node (this test's driver attaches there) and a worker node; RAY_ADDRESS points at it."""
    if ray is None:
        pytest.skip(f"Ray is not installed: {INSTALL_HINT}")
    logs = tmp_path_factory.mktemp("ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    old = {name: os.environ.get(name) for name in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    # No token authentication, whether or not ~/.ray/auth_token exists (nodes, driver and servers alike).
    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp = tempfile.mkdtemp(prefix="cserve-ray-")  # short: Ray's socket paths live under it
    nodes = [_ray_start("--head", "--port", str(port), "--include-dashboard=false", temp=temp,
                        log=logs / "head.log")]
    try:
        for _ in range(60):
            if subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", address],
                              check=False, capture_output=True, timeout=20).returncode == 0:
                break
            time.sleep(0.5)
        nodes.append(_ray_start("--address", address, temp=temp, log=logs / "worker.log"))
        os.environ["RAY_ADDRESS"] = address
        ray.init(address=address, logging_level="WARNING")
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the worker node did not join"
            time.sleep(0.2)
        yield address
    finally:
        ray.shutdown()  # before the nodes go: a driver whose cluster vanished exits
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for proc in reversed(nodes):
            _stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _llm(path: str, backend: str, **kw) -> LLM:
    return LLM(path, dtype="float32", num_gpu_blocks_override=128, max_model_len=256, num_threads=1,
               max_num_batched_tokens=32, enable_chunked_prefill=True, distributed_executor_backend=backend, **kw)


def _removed(pg) -> bool:
    from ray.util.placement_group import placement_group_table

    return placement_group_table(pg)["state"] == "REMOVED"


@pytest.fixture(scope="module")
def tp2_over_processes(model_zoo):
    llm = _llm(model_zoo.get("llama").path, "mp", tensor_parallel_size=2)
    try:
        return _run(llm)
    finally:
        llm.shutdown()


@pytest.mark.parametrize("nodes", [
    "one-node", pytest.param("two-nodes", marks=pytest.mark.skipif(not HAS_GLOO, reason="no gloo communicator"))])
def test_tp2_over_ray_equals_tp2_over_processes(ray_cluster, model_zoo, tp2_over_processes, monkeypatch, caplog,
                                                nodes):
    for name, value in (ONE_NODE if nodes == "one-node" else TWO_NODES).items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO, logger="cserve.ray")
    llm = _llm(model_zoo.get("llama").path, "ray", tensor_parallel_size=2)
    try:
        executor = llm._ranks.executor
        (rank1,) = llm._ranks.handles
        assert (rank1.node_id == executor.node_id) == (nodes == "one-node") == (not executor.remote)
        assert ("meet in shared memory" if nodes == "one-node" else "meet in gloo over TCP") in caplog.text
        got = _run(llm)
        assert rank1.poll() is None  # its run call is pending while the engine runs
    finally:
        llm.shutdown()
    _assert_same(got, tp2_over_processes)
    assert rank1.wait(timeout=10) == 0 and _removed(executor._pg)


def test_pp2_over_ray(ray_cluster, model_zoo, monkeypatch):
    """-pp 2: stage 1 is an actor (on the other node where gloo is built)."""
    for name, value in (TWO_NODES if HAS_GLOO else ONE_NODE).items():
        monkeypatch.setenv(name, value)
    path = model_zoo.get("qwen3").path
    one = _llm(path, "mp")
    want = _run(one)
    one.shutdown()
    split = _llm(path, "ray", pipeline_parallel_size=2)
    try:
        got = _run(split)
    finally:
        split.shutdown()
    _assert_same(got, want)


def _config(path: str, **fields) -> _core.EngineConfig:
    config = _core.EngineConfig()
    config.model = path
    config.dtype = "float32"
    config.num_gpu_blocks_override = 64
    config.max_model_len = 512
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def _drain_until(engine, done, timeout: float = 30.0) -> list:
    outs = []
    deadline = time.monotonic() + timeout
    while not done(outs):
        assert time.monotonic() < deadline, f"no end within {timeout} s: {outs[-3:]}"
        outs += engine.drain_outputs()
        time.sleep(0.01)
    return outs


def test_dp2_replicas_over_ray_share_the_load_and_die_together(ray_cluster, model_zoo, monkeypatch):
    """Two replicas, one per node (the front end listens on TCP): concurrent requests land on
    both; killing one replica's actor makes the engine dead and its next request fails."""
    from cserve.engine.ray_executor import RayDataParallelEngine

    monkeypatch.setenv("CSERVE_RAY_CPUS_PER_RANK", "1")
    engine = RayDataParallelEngine(_config(model_zoo.get("llama").path, num_threads=1), 2)
    executor = engine.executor
    try:
        assert executor.remote and executor.node_of(0) == executor.node_id != executor.node_of(1)
        for i in range(6):
            engine.add_request(f"r{i}", [5 + i, 6, 7, 8], _params(24))
        outs = _drain_until(engine, lambda outs: sum(o.finished for o in outs) == 6)
        assert all(not o.error for o in outs)
        assert [s.generation_tokens > 0 for s in engine.replica_stats()] == [True, True]
        engine.add_request("long", [9, 9, 9], _params(400))
        _drain_until(engine, lambda outs: outs)
        victim = executor.handles[1]  # the replica on the other node
        ray.kill(victim.actor)
        deadline = time.monotonic() + 30
        while not engine.is_dead():
            assert time.monotonic() < deadline, "the engine did not notice the killed replica"
            time.sleep(0.05)
        assert "replica 1 exited (status -9)" in engine.dead_reason()
        with pytest.raises(_core.EngineDeadError):
            engine.add_request("after", [1, 2], _params(4))
    finally:
        engine.shutdown()
    assert victim.poll() == -9
    assert _removed(executor._pg)


def test_a_killed_rank_actor_makes_the_engine_dead(ray_cluster, model_zoo, monkeypatch):
    from cserve.engine.ray_executor import start_engine_on_ray

    for name, value in (TWO_NODES if HAS_GLOO else ONE_NODE).items():
        monkeypatch.setenv(name, value)
    engine, ranks = start_engine_on_ray(_config(model_zoo.get("llama").path, tensor_parallel_size=2, num_threads=1))
    reasons = []
    ranks.watch(lambda reason: (reasons.append(reason), engine.kill(reason)))
    try:
        engine.start_loop()
        engine.add_request("a", [5, 6, 7], _params(400))
        _drain_until(engine, lambda outs: outs)
        ray.kill(ranks.handles[0].actor)
        outs = _drain_until(engine, lambda outs: any(o.finished for o in outs))
        assert outs[-1].request_id == "a" and outs[-1].error
        assert engine.is_dead()
        deadline = time.monotonic() + 10
        while not reasons:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert reasons == ["parallel rank 1 exited (status -9)"]
    finally:
        engine.shutdown()
        ranks.stop(timeout=5)
    assert _removed(ranks.executor._pg)


def test_without_ray_the_flag_says_how_to_install_it(model_zoo, chat_model_dir, monkeypatch, tmp_path):
    from cserve.llm import check_executor_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'cserve\[ray\]'"):
        check_executor_backend("ray", 2)
    with pytest.raises(ImportError, match=r"cserve\[ray\]"):
        _llm(model_zoo.get("llama").path, "ray", tensor_parallel_size=2)
    # `cserve serve` stops with one line (a `ray` package that cannot be imported comes first on the path).
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    for flags in (["-tp", "2", "--distributed-executor-backend", "ray"], ["-dp", "2", "--data-parallel-backend", "ray"]):
        r = subprocess.run([sys.executable, "-m", "cserve.cli.main", "serve", chat_model_dir, "--port", "0", *flags],
                           capture_output=True, text=True, timeout=60, check=False,
                           env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{_pythonpath()}"})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "pip install 'cserve[ray]'" in lines[0], r.stderr


def test_server_over_ray_answers_like_one_rank(ray_cluster, chat_model_dir, tmp_path):
    """`cserve serve -tp 2 --distributed-executor-backend ray` (rank 1 on the other node where gloo
    is built) and `-dp 2 --data-parallel-backend ray` answer as one rank does; nothing of Ray stays."""
    import openai
    from ray.util.placement_group import placement_group_table

    answers = []
    env = {"RAY_ADDRESS": ray_cluster, **(TWO_NODES if HAS_GLOO else ONE_NODE)}
    for flags in ([], ["-tp", "2", "--distributed-executor-backend", "ray"], ["-dp", "2", "-dpb", "ray"]):
        with ServerProcess(chat_model_dir, "--served-model-name", "m", "--max-model-len", "256", "--dtype",
                           "float32", *flags, env=env, log_dir=tmp_path) as server:
            server.wait_ready(timeout=60)
            client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=30)
            comp = client.completions.create(model="m", prompt="Hello world", temperature=0, max_tokens=16, n=2)
            answers.append([c.text for c in comp.choices])
            assert not flags or "Ray: " in server.log()
    assert answers[0] == answers[1] == answers[2]
    assert all(pg["state"] == "REMOVED" for pg in placement_group_table().values())
