"""The processes of tensor and pipeline parallelism: the engine (rank 0) runs in this process;
ranks 1..N-1 (N = tensor_parallel_size x pipeline_parallel_size) are processes of their own (`python -m cserve.engine.tensor_parallel_worker`), started before the
engine and meeting it in shared memory. Each rank is pinned to its own cores: vLLM-CPU's
VLLM_CPU_OMP_THREADS_BIND ("auto", the default: the cores this process may use, split in N
contiguous groups; "all": no pinning; or one list per rank, "0-3|4-7"). A rank that exits while
the engine runs is reported to `on_death` (the server then stops with an error); stop() leaves
no rank process behind."""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from typing import Callable, Iterable, Optional, Protocol

from cserve import _core

logger = logging.getLogger("cserve.tensor_parallel")


def _parse_cpu_list(text: str) -> list[int]:
    cores: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cores.extend(range(int(lo), int(hi or lo) + 1))
    return cores


def rank_cores(size: int, bind: Optional[str] = None) -> list[Optional[list[int]]]:
    """The cores of each rank (None: not pinned), from VLLM_CPU_OMP_THREADS_BIND."""
    bind = (bind if bind is not None else os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")).strip() or "auto"
    if bind == "all":
        return [None] * size
    if bind != "auto":
        groups = bind.split("|")
        if len(groups) != size:
            raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND lists {len(groups)} core sets for {size} ranks: {bind!r}")
        try:
            return [_parse_cpu_list(g) for g in groups]
        except ValueError:
            raise ValueError(f"VLLM_CPU_OMP_THREADS_BIND must be 'auto', 'all' or core lists like "
                             f"'0-3|4-7', got {bind!r}") from None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < size:  # fewer cores than ranks: ranks share them, one thread each
        return [[available[r % len(available)]] for r in range(size)]
    per = len(available) // size
    return [available[r * per:(r + 1) * per] for r in range(size)]


def _config_fields(config: _core.EngineConfig) -> dict:
    out = {}
    for name in dir(config):
        if name.startswith("_") or name == "load_progress":
            continue
        value = getattr(config, name)
        if not callable(value):
            out[name] = value
    return out


def start_child(module: str, args: list[str], cores: Optional[list[int]], config: _core.EngineConfig,
                env: Optional[dict] = None, **overrides) -> subprocess.Popen:
    """`python -m module args --cores ...`, given the engine config (with `overrides`) as JSON on
    stdin: the parent's side of child_config."""
    cmd = [sys.executable, "-m", module, *args]
    if cores:
        cmd += ["--cores", ",".join(map(str, cores))]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, text=True, env=env)
    proc.stdin.write(json.dumps({**_config_fields(config), **overrides}))
    proc.stdin.close()
    return proc


def child_config(cores: str) -> _core.EngineConfig:
    """In a rank or replica process: pins it to `cores` ("0,1,..."; empty: not pinned) and reads
    the engine config its parent wrote as JSON on stdin."""
    if cores:
        os.sched_setaffinity(0, [int(c) for c in cores.split(",")])
    config = _core.EngineConfig()
    for name, value in json.loads(sys.stdin.read()).items():
        setattr(config, name, value)
    return config


def _pin(cores: Optional[list[int]]) -> None:
    if cores:
        os.sched_setaffinity(0, cores)  # this thread, and the threads it starts (the engine's pool)


class ChildProcess(Protocol):
    """A started rank or replica: a subprocess.Popen, or what another launcher returns (a Ray
    actor's handle) with the same three methods (wait raises subprocess.TimeoutExpired)."""

    def poll(self) -> Optional[int]: ...

    def wait(self, timeout: Optional[float] = None) -> int: ...

    def kill(self) -> None: ...


def wait_or_kill(procs: Iterable[Optional[ChildProcess]], timeout: float) -> None:
    """Waits up to `timeout` seconds for each process (None: one of another node), then kills
    what is left and reaps it."""
    for proc in procs:
        if proc is None:
            continue
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# How rank and replica processes start: start_child's signature. The default starts local
# processes; the Ray executor places them as actors.
Launcher = Callable[..., ChildProcess]


class TensorParallelRanks:
    """Ranks 1..N-1 of one engine, as processes."""

    def __init__(self, config: _core.EngineConfig, cores: list[Optional[list[int]]],
                 launch: Launcher = start_child, ranks: Optional[range] = None) -> None:
        """ranks: the ranks to start here (default 1..N-1; a node of a multi-node engine starts its
        own); cores: those of this node's ranks, in order, from its first one (rank 0 on node 0)."""
        self.size = group_size(config)
        self._stopping = False
        self.unpin_on_stop: Optional[tuple[int, set]] = None  # (thread, its cores before rank 0 was pinned)
        ranks = ranks if ranks is not None else range(1, self.size)
        first = ranks.start - (len(cores) - len(ranks))  # the rank cores[0] belongs to
        self._procs = [launch("cserve.engine.tensor_parallel_worker", [str(rank)], cores[rank - first], config)
                       for rank in ranks]
        self._ranks = list(ranks)

    def watch(self, on_death: Callable[[str], None]) -> None:
        """Calls on_death(reason) once if a rank process exits before stop()."""
        for rank, proc in zip(self._ranks, self._procs):
            threading.Thread(target=self._wait_one, args=(rank, proc, on_death), daemon=True,
                             name=f"cserve-tp-rank{rank}").start()

    def _wait_one(self, rank: int, proc: ChildProcess, on_death: Callable[[str], None]) -> None:
        code = proc.wait()
        if not self._stopping:
            on_death(f"parallel rank {rank} exited (status {code})")

    def stop(self, timeout: float = 10.0) -> None:
        """Waits for the ranks to return (the engine told them to stop), then kills what is left."""
        self._stopping = True
        if self.unpin_on_stop is not None and self.unpin_on_stop[0] == threading.get_ident():
            os.sched_setaffinity(0, self.unpin_on_stop[1])
        wait_or_kill(self._procs, timeout)


class MultiNode:
    """vLLM's mp-backend multi-node flags: --nnodes nodes share the -tp x -pp ranks equally (node r
    runs ranks r*k .. (r+1)*k-1), meeting over gloo/TCP with rank 0's store at
    --master-addr:--master-port; node 0 runs rank 0 and the API server, the others run
    `--headless`."""

    def __init__(self, nnodes: int, node_rank: int, master_addr: str, master_port: int) -> None:
        self.nnodes, self.node_rank = nnodes, node_rank
        self.master_addr, self.master_port = master_addr, master_port

    @classmethod
    def from_args(cls, args) -> Optional["MultiNode"]:
        if args.nnodes <= 1:
            return None
        world = max(1, args.tensor_parallel_size) * max(1, args.pipeline_parallel_size)
        if not 0 <= args.node_rank < args.nnodes:
            raise ValueError(f"node_rank={args.node_rank} must be less than nnodes={args.nnodes}.")
        if world % args.nnodes:
            raise ValueError(f"tensor_parallel_size x pipeline_parallel_size ({world}) must be divisible by nnodes "
                             f"({args.nnodes}).")
        if args.data_parallel_size > 1:
            raise ValueError("--nnodes > 1 spreads one engine's ranks; for data parallelism across nodes use "
                             "--data-parallel-size-local, --data-parallel-address and --headless")
        if args.distributed_executor_backend not in (None, "mp"):
            raise ValueError("--nnodes > 1 is for the mp backend (Ray places ranks on its nodes itself)")
        if args.node_rank > 0 and not args.headless:
            raise ValueError(f"node {args.node_rank} of {args.nnodes} runs ranks only: add --headless (the API "
                             "server runs on node 0)")
        if args.node_rank == 0 and args.headless:
            raise ValueError("node 0 runs rank 0 and the API server: drop --headless there")
        return cls(args.nnodes, args.node_rank, args.master_addr, args.master_port)

    def ranks_of(self, node: int, world: int) -> range:
        per = world // self.nnodes
        return range(node * per, (node + 1) * per)

    def configure(self, config: _core.EngineConfig) -> None:
        """The same group on every node: gloo through rank 0's store at the master address."""
        config.tensor_parallel_store = f"{self.master_addr}:{self.master_port}"
        config.tensor_parallel_group = f"cserve-mn-{self.master_port}"


def run_node_ranks(config: _core.EngineConfig, nodes: MultiNode) -> int:
    """A headless node of a multi-node engine: starts its ranks, returns when they have (0 when
    all returned normally: rank 0 stopped them)."""
    import signal

    nodes.configure(config)
    size = group_size(config)
    mine = nodes.ranks_of(nodes.node_rank, size)
    cores = rank_cores(len(mine))
    if config.num_threads <= 0 and cores[0]:
        config.num_threads = len(cores[0])
    ranks = TensorParallelRanks(config, cores, start_child, mine)
    logger.info("Node %d of %d: ranks %d..%d of %d, meeting at %s:%d", nodes.node_rank, nodes.nnodes, mine.start,
                mine.stop - 1, size, nodes.master_addr, nodes.master_port)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(0.2):
            codes = [p.poll() for p in ranks._procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if stop.is_set():
            for p in ranks._procs:
                if p.poll() is None:
                    p.terminate()
        ranks.stop(timeout=15)
    failed = [(r, p.returncode) for r, p in zip(mine, ranks._procs) if p.returncode not in (0, -15)]
    for rank, code in failed:
        logger.error("rank %d exited with status %s", rank, code)
    return 1 if failed else 0


def _check_gpus(config: _core.EngineConfig, local_ranks: int) -> None:
    """On CUDA each rank of this host takes its own GPU (rank r: cuda:r): refuses fewer visible GPUs
    than ranks, and names NCCL's library for the ranks (they inherit the environment)."""
    device = config.device
    if _core.resolve_device(device)[0] == "cpu":
        return
    if device not in ("cuda", "auto"):
        raise ValueError(f"with tensor or pipeline parallelism each rank takes its own GPU (rank r: cuda:r); "
                         f"pass --device cuda rather than {device} (CUDA_VISIBLE_DEVICES chooses the GPUs)")
    visible = 0
    while visible < local_ranks:
        try:
            _core.resolve_device(f"cuda:{visible}")
        except (ValueError, NotImplementedError):
            break
        visible += 1
    if visible < local_ranks:
        raise ValueError(f"tensor_parallel_size x pipeline_parallel_size = {local_ranks} ranks on this host need "
                         f"{local_ranks} GPUs, one per rank, but only {visible} are visible")
    from cserve.cuda_libs import find_cublaslt, find_nccl

    for variable, path in (("CSERVE_NCCL_LIBRARY", find_nccl()), ("CSERVE_CUBLASLT", find_cublaslt())):
        if path and not os.environ.get(variable):
            os.environ[variable] = path


def group_size(config: _core.EngineConfig) -> int:
    return max(1, config.tensor_parallel_size) * max(1, config.pipeline_parallel_size)


def start_engine(config: _core.EngineConfig, launch: Launcher = start_child,
                 nodes: Optional["MultiNode"] = None) -> tuple[_core.Engine, Optional[TensorParallelRanks]]:
    """The engine for `config`; with tensor or pipeline parallelism its other ranks too (started
    first: they wait for the engine's shared memory). Call from the thread that should run rank
    0's compute: it is pinned to rank 0's cores. nodes: this is node 0 of a multi-node engine
    (only its share of the ranks start here; the other nodes start theirs)."""
    size = group_size(config)
    if size <= 1:
        return _core.Engine(config), None
    local = range(0, size) if nodes is None else nodes.ranks_of(0, size)
    if nodes is not None:
        nodes.configure(config)
    if not config.tensor_parallel_group:
        config.tensor_parallel_group = f"cserve-tp-{os.getpid()}-{secrets.token_hex(4)}"
    _check_gpus(config, len(local))
    cores = rank_cores(len(local))
    if config.num_threads <= 0 and cores[0]:
        config.num_threads = len(cores[0])  # each rank runs as many threads as it has cores
    ranks = TensorParallelRanks(config, cores, launch, range(1, local.stop))
    # Rank 0 computes on this thread and the pool threads it starts: pinned to its cores until
    # the ranks stop (then this thread gets its cores back, so a next engine sees all of them).
    ranks.unpin_on_stop = (threading.get_ident(), os.sched_getaffinity(0))
    try:
        _pin(cores[0])
        engine = _core.Engine(config)
    except BaseException:
        ranks.stop(timeout=0)
        raise
    logger.info("Parallelism: %d ranks (-tp %d x -pp %d; rank 0 in this process), cores %s", size,
                max(1, config.tensor_parallel_size), max(1, config.pipeline_parallel_size),
                " | ".join(",".join(map(str, c)) if c else "any" for c in cores))
    return engine, ranks
