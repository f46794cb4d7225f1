"""`--distributed-executor-backend ray` and `--data-parallel-backend ray`: the other ranks of one
engine, or the data-parallel replicas, run as Ray actors placed by a placement group, as vLLM places
its workers. Ray is an optional extra (`pip install 'cserve[ray]'`).

- Connecting: an existing cluster (RAY_ADDRESS, or the one `ray start` started on this host if
  its GCS answers), else a local one started for this process; a process that already called
  ray.init keeps its connection.
- Placement: one bundle per rank ({"CPU": cores per rank}), strategy CSERVE_RAY_PLACEMENT_STRATEGY
  (PACK by default). With ranks, rank 0 stays in this process: the first bundle is tied to this
  node and reserved for it (vLLM's driver worker); ranks 1..N-1 take the other bundles, this
  node's first, then node by node (so a tensor-parallel group stays on one node when it can).
- Transport: when every actor is on this node, the ranks meet in shared memory (and replicas on a
  Unix socket), as with processes; when any is on another node, the ranks meet over gloo/TCP
  (EngineConfig.tensor_parallel_store = this node's ip:a free port, rank 0 hosting the store) and
  the replicas connect to the front end over TCP.
- Cores: Ray reserves a number of CPUs, not which ones. An actor on this node is pinned to the
  cores the mp backend would give its rank (VLLM_CPU_OMP_THREADS_BIND), so it never shares rank
  0's; an actor on another node is left unpinned (this node's core numbers mean nothing there),
  running as many threads as a rank of this node (by default its bundle's CPUs).
- Each actor runs its rank's (or replica's) code in the actor process; its handle is a
  ChildProcess (poll/wait/kill), so a killed actor or a dead node makes the engine dead exactly as
  an exited rank process does. stop()/shutdown() remove every actor and the placement group.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import secrets
import socket
import subprocess
import threading
import time
from typing import Any, Optional

from cserve.engine.data_parallel import DataParallelEngine
from cserve.engine.tensor_parallel import (
    TensorParallelRanks,
    _config_fields,
    group_size,
    rank_cores,
    start_engine,
)

logger = logging.getLogger("cserve.ray")

INSTALL_HINT = "pip install 'cserve[ray]'"
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Environment variables an actor takes from this process (on top of what the caller adds).
_ENV_PREFIXES = ("CSERVE_", "VLLM_", "HF_")
_NODE_ENV = ("VLLM_HOST_IP",)  # this node's own


class RayNotInstalled(ImportError, RuntimeError):
    """An ImportError that the CLI reports in one line, as it reports a RuntimeError."""


def require_ray():
    """The ray module, or RayNotInstalled saying how to get it."""
    try:
        import ray
    except ImportError as e:
        raise RayNotInstalled(f"the Ray backend needs Ray, which is not installed ({e}): {INSTALL_HINT}") from None
    return ray


def check_ray_data_parallel(args) -> None:
    """--data-parallel-backend ray: Ray installed, and one front end that places every replica."""
    require_ray()
    local = getattr(args, "data_parallel_size_local", None)
    if getattr(args, "headless", False) or local not in (None, args.data_parallel_size) or \
            (getattr(args, "api_server_count", None) or 1) > 1:
        raise NotImplementedError("--data-parallel-backend ray places every replica itself, from one API server: "
                                  "not with --headless, --data-parallel-size-local or --api-server-count > 1")


def _connect(ray) -> str:
    """Connects this process to Ray as vLLM does; returns how."""
    if ray.is_initialized():
        return "the existing connection of this process"
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": True}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return f"the cluster at {address} (RAY_ADDRESS)"
    address = _cluster_on_this_host()
    if address:
        ray.init(address=address, **kwargs)
        return f"the cluster running on this host ({address})"
    ray.init(address="local", include_dashboard=False, **kwargs)
    return "a local Ray instance started for this process"


def _cluster_on_this_host() -> Optional[str]:
    """What `ray.init(address="auto")` would join: the cluster `ray start` last started on this
    host, if its GCS answers (Ray itself would wait minutes on the address a crashed or killed
    cluster left behind)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        address = canonicalize_bootstrap_address("auto")
    except Exception:  # noqa: BLE001 - none (ConnectionError), or Ray moved its internals
        return None
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except (OSError, ValueError):
        logger.warning("Ray: the cluster last started on this host (%s) does not answer; starting a local "
                       "instance", address)
        return None
    return address


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {text!r}")
    return value


def cpus_per_bundle(count: int) -> float:
    """CPUs each rank's (or replica's) bundle reserves: CSERVE_RAY_CPUS_PER_RANK, else the cores
    the mp backend would give each of `count` ranks on this node."""
    cores = rank_cores(count)[0]
    default = len(cores) if cores else max(1, (os.cpu_count() or 1) // count)
    return _env_float("CSERVE_RAY_CPUS_PER_RANK", float(default))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _config_from_fields(fields: str):
    from cserve import _core

    config = _core.EngineConfig()
    for name, value in json.loads(fields).items():
        setattr(config, name, value)
    return config


def _run_child(module: str, args: list[str], cores: list[int] | None, fields: str, env: dict) -> int:
    """In the actor: the code `python -m module args` would run, given the engine config."""
    os.environ.update(env)
    if cores:
        os.sched_setaffinity(0, cores)  # this thread and the engine threads it starts
    config = _config_from_fields(fields)
    if module == "cserve.engine.tensor_parallel_worker":
        from cserve.engine.tensor_parallel_worker import run

        return run(int(args[0]), config)
    if module == "cserve.engine.replica":
        from cserve.engine.replica import parse_args, run

        a = parse_args(args)
        return run(a.index, a.address, config, a.tokenizer)
    raise ValueError(f"the Ray executor cannot run {module}")


class CserveWorker:
    """The actor: one rank or replica, whose work runs in the actor's process."""

    def run(self, module: str, args: list[str], cores: list[int] | None, fields: str, env: dict) -> int:
        return _run_child(module, args, cores, fields, env)


class RayChild:
    """A ChildProcess over one actor: poll() is None while its run call is pending, then its exit
    status (-9 when the actor or its node died); wait(timeout) raises subprocess.TimeoutExpired;
    kill() kills the actor."""

    def __init__(self, ray, actor, ref, name: str, node_id: str) -> None:
        self._ray = ray
        self.actor = actor
        self._ref = ref
        self.name = name
        self.node_id = node_id
        self.returncode: int | None = None
        self._lock = threading.Lock()

    def _finish(self) -> None:
        ray = self._ray
        try:
            code = int(ray.get(self._ref))
        except ray.exceptions.RayActorError as e:  # killed, crashed, or its node is gone
            logger.error("Ray: %s died: %s", self.name, str(e).strip().splitlines()[0] if str(e) else e)
            code = -9
        except Exception as e:  # noqa: BLE001 - any other failure of the call is the actor's end too
            logger.error("Ray: %s failed: %s", self.name, e)
            code = 1
        with self._lock:
            if self.returncode is None:
                self.returncode = code

    def _ready(self, timeout: float | None) -> bool:
        try:
            done, _ = self._ray.wait([self._ref], timeout=timeout)
        except Exception as e:  # noqa: BLE001 - the connection to Ray is gone: so is the actor
            logger.error("Ray: lost %s: %s", self.name, e)
            with self._lock:
                if self.returncode is None:
                    self.returncode = -1
            return False
        return bool(done)

    def poll(self) -> int | None:
        if self.returncode is None and self._ready(0):
            self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if self._ready(timeout):
                self._finish()
            elif self.returncode is None:
                raise subprocess.TimeoutExpired(self.name, timeout)
        return self.returncode

    def kill(self) -> None:
        try:
            self._ray.kill(self.actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - already gone
            logger.debug("Ray: killing %s: %s", self.name, e)


class RayExecutor:
    """One placement group: `count` bundles of `cpus` CPUs. driver_bundle: the first one is this
    process's (rank 0, on this node) and launch() places index i >= 1 in the i-th of the others;
    otherwise launch() places index i in the i-th bundle."""

    def __init__(self, count: int, cpus: float, driver_bundle: bool) -> None:
        t0 = time.perf_counter()
        ray = require_ray()
        from ray.util.placement_group import placement_group, placement_group_table

        self._ray = ray
        self.handles: list[RayChild] = []
        self._pg = None
        self._closed = False
        how = _connect(ray)
        t_connect = time.perf_counter() - t0
        self.node_id = ray.get_runtime_context().get_node_id()
        self.node_ip = os.environ.get("VLLM_HOST_IP") or ray.util.get_node_ip_address()
        strategy = os.environ.get("CSERVE_RAY_PLACEMENT_STRATEGY", "PACK").strip().upper() or "PACK"
        if strategy not in STRATEGIES:
            raise ValueError(f"CSERVE_RAY_PLACEMENT_STRATEGY must be one of {', '.join(STRATEGIES)}, "
                             f"got {strategy!r}")
        bundles = [{"CPU": cpus} for _ in range(count)]
        kwargs: dict[str, Any] = {}
        if driver_bundle:
            # Rank 0 runs here: its bundle must be on this node (vLLM ties it by the node's ip).
            if "bundle_label_selector" in inspect.signature(placement_group).parameters:
                kwargs["bundle_label_selector"] = [{"ray.io/node-id": self.node_id}] + [{}] * (count - 1)
            else:
                bundles[0][f"node:{self.node_ip}"] = 0.001
        self._pg = placement_group(bundles, strategy=strategy, name=f"cserve-{os.getpid()}-{secrets.token_hex(3)}",
                                   **kwargs)
        timeout = _env_float("CSERVE_RAY_PLACEMENT_TIMEOUT", 120.0)
        try:
            ray.get(self._pg.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise RuntimeError(
                f"the Ray cluster could not place {count} bundles of {{'CPU': {cpus:g}}} ({strategy}) within "
                f"{timeout:g} s (CSERVE_RAY_PLACEMENT_TIMEOUT); available: {ray.available_resources()}; set "
                "CSERVE_RAY_CPUS_PER_RANK or add nodes") from None
        where = placement_group_table(self._pg)["bundles_to_node_id"]
        self._bundle_node = {int(b): n for b, n in where.items()}
        # Slots: this node's bundles first (the first of them rank 0's), then node by node.
        order = sorted(range(count), key=lambda b: (self._bundle_node[b] != self.node_id, b))
        nodes = list(dict.fromkeys(self._bundle_node[b] for b in order))
        order.sort(key=lambda b: nodes.index(self._bundle_node[b]))
        if driver_bundle and self._bundle_node[order[0]] != self.node_id:
            logger.warning("Ray: no bundle landed on this node; rank 0 runs here outside the placement group")
        self._order = order
        self._cpus = cpus
        self._first = 1 if driver_bundle else 0
        self.remote = any(self._bundle_node[b] != self.node_id for b in order[self._first:])
        self._actor_cls = ray.remote(CserveWorker)
        self.seconds = time.perf_counter() - t0
        logger.info("Ray: connected to %s in %.2f s; placement group of %d x {CPU: %g} (%s) ready in %.2f s, "
                    "on %d node(s)%s", how, t_connect, count, cpus, strategy, self.seconds - t_connect,
                    len(nodes), "" if not self.remote else f"; ranks on other nodes: TCP from {self.node_ip}")

    def node_of(self, index: int) -> str:
        return self._bundle_node[self._order[index]]

    def launch(self, module: str, args: list[str], cores: list[int] | None, config: Any,
               env: dict | None = None, **overrides) -> RayChild:
        """start_child's signature: `module` with `args` as an actor in the next bundle (ranks
        and replicas are launched in order). An actor on this node is pinned to `cores`; one on
        another node is not, and runs the same number of threads."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = self._order[self._first + len(self.handles)]
        node = self._bundle_node[bundle]
        here = node == self.node_id
        fields = dict(_config_fields(config), **overrides)
        delta = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES) and k not in _NODE_ENV}
        delta.update({k: v for k, v in (env or {}).items() if os.environ.get(k) != v})  # what the caller added
        actor = self._actor_cls.options(
            num_cpus=self._cpus, max_restarts=0, max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=bundle),
        ).remote()
        name = f"{'rank' if module.endswith('tensor_parallel_worker') else 'replica'} {args[0]} (a Ray actor)"
        ref = actor.run.remote(module, list(args), cores if here else None, json.dumps(fields), delta)
        handle = RayChild(self._ray, actor, ref, name, node)
        self.handles.append(handle)
        return handle

    def tensor_parallel_store(self) -> str:
        """host:port for the gloo rendezvous, hosted by rank 0 (this process)."""
        return f"{self.node_ip}:{_free_port(self.node_ip)}"

    def shutdown(self) -> None:
        """Kills the actors still there and removes the placement group; idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in self.handles:
            handle.kill()  # also an actor whose run returned: its process stays until killed
        if self._pg is not None:
            try:
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(self._pg)
            except Exception as e:  # noqa: BLE001 - Ray is already gone
                logger.debug("Ray: removing the placement group: %s", e)


def _use_gloo_if_remote(executor: RayExecutor, config: Any) -> str:
    if not executor.remote:
        return "shared memory"
    if not hasattr(config, "tensor_parallel_store"):
        raise NotImplementedError("Ray placed ranks on other nodes, and this build of cserve has no gloo "
                                  "communicator (EngineConfig.tensor_parallel_store) to reach them; keep the "
                                  "ranks on one node (CSERVE_RAY_PLACEMENT_STRATEGY=STRICT_PACK)")
    if not config.tensor_parallel_store:
        config.tensor_parallel_store = executor.tensor_parallel_store()
    return f"gloo over TCP (store {config.tensor_parallel_store})"


class RayRanks:
    """TensorParallelRanks whose ranks are Ray actors: stop() also removes what Ray holds."""

    def __init__(self, ranks: TensorParallelRanks, executor: RayExecutor) -> None:
        self._ranks = ranks
        self.executor = executor
        self.size = ranks.size

    @property
    def handles(self) -> list[RayChild]:
        return self.executor.handles

    def watch(self, on_death) -> None:
        self._ranks.watch(on_death)

    def stop(self, timeout: float = 10.0) -> None:
        try:
            self._ranks.stop(timeout)
        finally:
            self.executor.shutdown()


def start_engine_on_ray(config: Any):
    """start_engine with ranks 1..N-1 as Ray actors: (engine, RayRanks or None)."""
    size = group_size(config)
    if size <= 1:
        return start_engine(config)
    t0 = time.perf_counter()
    executor = RayExecutor(size, cpus_per_bundle(size), driver_bundle=True)
    try:
        transport = _use_gloo_if_remote(executor, config)
        engine, ranks = start_engine(config, launch=executor.launch)
    except BaseException:
        executor.shutdown()
        raise
    logger.info("Ray: %d ranks (rank 0 in this process, %d actors) meet in %s; Ray start-up %.2f s, engine "
                "ready in %.2f s", size, size - 1, transport, executor.seconds, time.perf_counter() - t0)
    return engine, RayRanks(ranks, executor)


class RayDataParallelEngine(DataParallelEngine):
    """DataParallelEngine whose replicas are Ray actors, one bundle each; the front end listens on
    TCP (this node's ip) when a replica is on another node. shutdown() removes what Ray holds."""

    def __init__(self, config: Any, size: int, tokenizer: str = "", **kwargs: Any) -> None:
        if kwargs.pop("local", size) not in (None, size):
            raise ValueError("--data-parallel-backend ray places every replica itself: drop "
                             "--data-parallel-size-local and --headless nodes")
        kwargs.pop("address", None)
        kwargs.pop("launch", None)
        self.executor = RayExecutor(size, cpus_per_bundle(size), driver_bundle=False)
        address = (self.executor.node_ip, 0) if self.executor.remote else None
        try:
            super().__init__(config, size, tokenizer, launch=self.executor.launch, address=address, **kwargs)
        except BaseException:
            self.executor.shutdown()
            raise
        logger.info("Ray: %d data-parallel replicas as actors, front end on %s; Ray start-up %.2f s", size,
                    f"TCP {self.executor.node_ip}" if address else "a Unix socket", self.executor.seconds)

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            self.executor.shutdown()
