"""vLLM's mp multi-node flags on one host: node 0 (`--nnodes 2 --node-rank 0`) runs rank 0 and the
API server, node 1 (`--node-rank 1 --headless`) runs the other half of the ranks; they meet over
gloo/TCP at --master-addr:--master-port. Answers equal one node's; stopping node 0 ends node 1;
wrong layouts are refused."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers.server import ServerProcess, _pythonpath, child_processes, free_port, process_gone


def _ask(server) -> list[str]:
    import openai

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0)
    out = client.completions.create(model="m", prompt="Hello world", temperature=0, max_tokens=16, n=2, logprobs=2)
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Tell me a story."}],
                                          temperature=0, max_tokens=24)
    return [c.text for c in out.choices] + [chat.choices[0].message.content]


@pytest.mark.parametrize("split", [["-tp", "2"], ["-pp", "2"]], ids=["tp2", "pp2"])
def test_two_nodes_answer_as_one(chat_model_dir, tmp_path, split):
    common = ["--served-model-name", "m", "--max-model-len", "256", "--dtype", "float32", *split]
    with ServerProcess(chat_model_dir, *common, log_dir=tmp_path) as one:
        one.wait_ready(timeout=120)
        want = _ask(one)
    port = str(free_port())
    nodes = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    env = {**os.environ, "PYTHONPATH": _pythonpath(), "CSERVE_NUM_THREADS": "1"}
    log = open(tmp_path / "node1.log", "wb")
    node1 = subprocess.Popen([sys.executable, "-m", "cserve.cli.main", "serve", chat_model_dir, *common, *nodes,
                              "--node-rank", "1", "--headless"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        with ServerProcess(chat_model_dir, *common, *nodes, "--node-rank", "0", log_dir=tmp_path) as node0:
            node0.wait_ready(timeout=120)
            assert child_processes(node0.proc.pid, "tensor_parallel_worker") == []  # its one rank is rank 0
            ranks = child_processes(node1.pid, "tensor_parallel_worker")
            assert len(ranks) == 1
            assert _ask(node0) == want
        assert node1.wait(timeout=60) == 0  # rank 0 stopped: node 1's rank returned
        assert all(process_gone(pid) for pid in ranks)
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()
        log.close()


@pytest.mark.parametrize("flags,message", [
    (["-tp", "2", "--nnodes", "2", "--node-rank", "1"], "add --headless"),
    (["-tp", "2", "--nnodes", "2", "--headless"], "drop --headless"),
    (["-tp", "3", "--nnodes", "2"], "must be divisible by nnodes"),
    (["-tp", "2", "--nnodes", "2", "--node-rank", "2", "--headless"], "node_rank=2 must be less than nnodes=2"),
    (["-tp", "2", "--nnodes", "2", "-dp", "2"], "for data parallelism across nodes"),
])
def test_layouts_refused(flags, message):
    from cserve.cli.args import parse_serve_args
    from cserve.engine.tensor_parallel import MultiNode

    with pytest.raises(ValueError, match=message):
        MultiNode.from_args(parse_serve_args(["/m", *flags]))
