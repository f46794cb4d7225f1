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
from typing import Callable, Optional, Protocol

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


# How rank and replica processes start: start_child's signature. The default starts local
# processes; the Ray executor places them as actors.
Launcher = Callable[..., ChildProcess]


class TensorParallelRanks:
    """Ranks 1..N-1 of one engine, as processes."""

    def __init__(self, config: _core.EngineConfig, cores: list[Optional[list[int]]],
                 launch: Launcher = start_child) -> None:
        self.size = group_size(config)
        self._stopping = False
        self._procs = [launch("cserve.engine.tensor_parallel_worker", [str(rank)], cores[rank], config)
                       for rank in range(1, self.size)]

    def watch(self, on_death: Callable[[str], None]) -> None:
        """Calls on_death(reason) once if a rank process exits before stop()."""
        for rank, proc in enumerate(self._procs, start=1):
            threading.Thread(target=self._wait_one, args=(rank, proc, on_death), daemon=True,
                             name=f"cserve-tp-rank{rank}").start()

    def _wait_one(self, rank: int, proc: ChildProcess, on_death: Callable[[str], None]) -> None:
        code = proc.wait()
        if not self._stopping:
            on_death(f"parallel rank {rank} exited (status {code})")

    def stop(self, timeout: float = 10.0) -> None:
        """Waits for the ranks to return (the engine told them to stop), then kills what is left."""
        self._stopping = True
        for proc in self._procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def group_size(config: _core.EngineConfig) -> int:
    return max(1, config.tensor_parallel_size) * max(1, config.pipeline_parallel_size)


def start_engine(config: _core.EngineConfig,
                 launch: Launcher = start_child) -> tuple[_core.Engine, Optional[TensorParallelRanks]]:
    """The engine for `config`; with tensor or pipeline parallelism its other ranks too (started
    first: they wait for the engine's shared memory). Call from the thread that should run rank
    0's compute: it is pinned to rank 0's cores."""
    size = group_size(config)
    if size <= 1:
        return _core.Engine(config), None
    if not config.tensor_parallel_group:
        config.tensor_parallel_group = f"cserve-tp-{os.getpid()}-{secrets.token_hex(4)}"
    cores = rank_cores(size)
    if config.num_threads <= 0 and cores[0]:
        config.num_threads = len(cores[0])  # each rank runs as many threads as it has cores
    ranks = TensorParallelRanks(config, cores, launch)
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
