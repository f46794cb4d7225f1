"""Data parallelism: --data-parallel-size N runs N whole engines (replicas, each a process of
its own with its own tensor/pipeline ranks) behind one front end. DataParallelEngine stands where
the one engine stands (the methods of cserve._core.Engine that the servers use): each request
goes to the replica with the fewest sequences in flight (vLLM's coordinator balances by its
replicas' running and waiting counts), outputs from every replica come back through one file
descriptor, and the load is the replicas' summed. A replica that exits makes the whole engine
dead: its requests end with an error, and the server stops (status 1), as with one engine."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Listener
from typing import Any, Optional

from cserve.engine.tensor_parallel import ChildProcess, Launcher, start_child, wait_or_kill

logger = logging.getLogger("cserve.data_parallel")

# The core SamplingParams fields that travel to a replica (the grammar travels serialized).
_PARAM_FIELDS = ("n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "seed", "max_tokens", "min_tokens", "stop_token_ids", "ignore_eos", "logprobs",
                 "prompt_logprobs", "logit_bias", "allowed_token_ids", "grammar_start_after")
_STATS_FIELDS = ("num_running", "num_waiting", "kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits",
                 "prompt_tokens", "generation_tokens", "num_preemptions", "num_steps", "num_free_blocks",
                 "steps_by_tokens_log2", "scheduled_tokens", "spec_decode_num_drafts", "spec_decode_num_draft_tokens",
                 "spec_decode_num_accepted_tokens", "spec_decode_num_accepted_tokens_per_pos")
_PER_BUCKET_FIELDS = ("steps_by_tokens_log2", "spec_decode_num_accepted_tokens_per_pos")  # summed entry by entry


def replica_key() -> bytes:
    """The key replicas of other nodes present (multiprocessing.connection's challenge):
    CSERVE_DATA_PARALLEL_KEY, the same on every node; without it a fixed one, so keep the port
    on a trusted network (as vLLM's data-parallel RPC port)."""
    return os.environ.get("CSERVE_DATA_PARALLEL_KEY", "cserve-data-parallel").encode()


def start_replica(index: int, address: str, cores: Optional[list[int]], config: Any, env: dict,
                  tokenizer: str = "", launch: Optional[Launcher] = None) -> ChildProcess:
    """Replica `index` (python -m cserve.engine.replica), pinned to `cores` with a thread each,
    serving the front end(s) at `address`."""
    threads = {"num_threads": config.num_threads or len(cores)} if cores else {}
    args = [str(index), address] + (["--tokenizer", tokenizer] if tokenizer else [])
    return (launch or start_child)("cserve.engine.replica", args, cores, config, env, **threads)


def connect_front_end(address: str):
    """A replica's connection to its front end: a Unix socket path, or host:port on another node.
    Waits for a front end that is not listening yet (a headless node started before the head, API
    servers that start alongside the replicas)."""
    from multiprocessing.connection import Client

    key = bytes.fromhex(os.environ["CSERVE_REPLICA_KEY"])
    if address.startswith("/"):
        target, family = address, "AF_UNIX"
    else:
        host, _, port = address.rpartition(":")
        target, family = (host, int(port)), "AF_INET"
    deadline = time.monotonic() + float(os.environ.get("CSERVE_DATA_PARALLEL_CONNECT_TIMEOUT", "600"))
    while True:
        try:
            return Client(target, family=family, authkey=key)
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no data-parallel front end answered at {address}") from None
            time.sleep(0.2)


def params_to_wire(p: Any, serialize) -> dict:
    wire = {name: getattr(p, name) for name in _PARAM_FIELDS}
    wire["grammar"] = serialize(p.grammar) if p.grammar is not None else None
    return wire


def params_from_wire(wire: dict, compiler: Any) -> Any:
    from cserve import _core

    p = _core.SamplingParams()
    for name in _PARAM_FIELDS:
        setattr(p, name, wire[name])
    if wire.get("grammar") is not None:
        p.grammar = compiler.deserialize(wire["grammar"])
    return p


@dataclass
class WireLogprobs:
    token_ids: list
    logprobs: list
    ranks: list


@dataclass
class WireOutput:
    """A replica's RequestOutput, with the same attributes."""

    request_id: str
    index: int
    new_token_ids: list
    new_logprobs: list
    prompt_logprobs: list
    has_prompt_logprobs: bool
    finish_reason: Optional[str]
    stop_token_id: int
    num_prompt_tokens: int
    num_cached_tokens: int
    error: str
    scheduled_time: float = 0.0  # steady-clock seconds when first scheduled (the same clock on one machine)
    time: float = 0.0  # steady-clock seconds when the replica's engine produced it
    engine: int = 0  # the replica that produced it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


def _lp(p) -> tuple:
    return (list(p.token_ids), list(p.logprobs), list(p.ranks))


def output_to_wire(o) -> tuple:
    return (o.request_id, o.index, list(o.new_token_ids), [_lp(p) for p in o.new_logprobs],
            [_lp(p) for p in o.prompt_logprobs], o.has_prompt_logprobs, o.finish_reason, o.stop_token_id,
            o.num_prompt_tokens, o.num_cached_tokens, o.error, o.scheduled_time, o.time)


def output_from_wire(t: tuple) -> WireOutput:
    rid, index, ids, lps, plps, has_plp, reason, stop_id, n_prompt, n_cached, error, scheduled, made = t
    return WireOutput(rid, index, ids, [WireLogprobs(*p) for p in lps], [WireLogprobs(*p) for p in plps], has_plp,
                      reason, stop_id, n_prompt, n_cached, error, scheduled, made)


def stats_to_wire(s) -> tuple:
    return tuple(list(v) if isinstance(v, (list, tuple)) else v for v in (getattr(s, n) for n in _STATS_FIELDS))


class _Stats:
    def __init__(self, per_replica: list[tuple]) -> None:
        rows = [r for r in per_replica if r is not None]
        for i, name in enumerate(_STATS_FIELDS):
            values = [r[i] for r in rows] or [0]
            if name in _PER_BUCKET_FIELDS:
                setattr(self, name, [sum(c) for c in zip(*values)] if rows else [])
            else:
                setattr(self, name, sum(values) / len(values) if name == "kv_cache_usage" else sum(values))


class _Info:
    def __init__(self, fields: dict) -> None:
        self.__dict__.update(fields)


class PrefixPlacement:
    """Remembers, per replica, the prompt blocks it was recently given (chained hashes of full
    blocks, as the prefix cache keys them; LRU, about one replica's KV cache worth), so a prompt
    can go where its longest prefix is likely still cached."""

    def __init__(self, size: int, block_size: int, capacity: int) -> None:
        self.block_size = block_size
        self.capacity = max(1, capacity)
        self._seen: list[OrderedDict] = [OrderedDict() for _ in range(size)]

    def hashes(self, prompt: list, salt: str) -> list[int]:
        out, h, b = [], hash(salt), self.block_size
        for start in range(0, len(prompt) - b + 1, b):
            h = hash((h, tuple(prompt[start:start + b])))
            out.append(h)
        return out

    def matched(self, replica: int, hashes: list[int]) -> int:
        seen, n = self._seen[replica], 0
        for h in hashes:
            if h not in seen:
                break
            n += 1
        return n

    def remember(self, replica: int, hashes: list[int]) -> None:
        seen = self._seen[replica]
        for h in hashes:
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.capacity:
            seen.popitem(last=False)

    def forget(self) -> None:
        for seen in self._seen:
            seen.clear()


PLACEMENTS = ("least_loaded", "prefix_aware", "round_robin")


class DataParallelEngine:
    """`size` replicas in all; `local` of them (default: all) started here through `launch`, the
    others (headless nodes: `cserve serve --headless`) connect to `address`. address: None for a
    Unix socket of this process (every replica local), or (host, port) to listen on TCP."""

    def __init__(self, config: Any, size: int, tokenizer: str = "", launch: Optional[Launcher] = None,
                 local: Optional[int] = None, start_index: int = 0,
                 address: Optional[tuple[str, int] | str] = None, placement: str = "least_loaded",
                 first_label: int = 0) -> None:
        from cserve.engine.tensor_parallel import rank_cores

        if placement not in PLACEMENTS:
            raise ValueError(f"data-parallel placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        launch = launch or start_child
        self.placement = placement
        # Request ids are this front end's own (a counter): with several API servers sharing the
        # replicas, each prefixes its ids on the wire so that they never meet in a replica.
        self._tag = secrets.token_hex(4) + "-"
        self.first_label = first_label  # vLLM's engine label of replica 0 (its global rank)
        self._next = 0  # round robin
        local = size if local is None else local
        self.size = size
        self._lock = threading.Lock()
        self._dead: Optional[str] = None
        self._stopping = False
        self._outputs: list = []
        self._in_flight = [0] * size
        self._others = [0] * size  # sequences other front ends (API servers) have on each replica
        self._owner: dict[str, int] = {}  # request id -> its replica, while in flight
        self._remaining: dict[str, int] = {}  # request id -> completions not finished
        self._stats: list[Optional[tuple]] = [None] * size
        self._acks: dict[str, tuple] = {}
        self._ack_cv = threading.Condition(self._lock)
        self._resets: dict[int, bool] = {}
        self.serialize_grammar = None  # set by the server: GrammarService.serialize
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        folder = None
        if address is None:
            key = secrets.token_bytes(16)
            folder = tempfile.mkdtemp(prefix="cserve-dp-")
            listener = Listener(os.path.join(folder, "front"), family="AF_UNIX", authkey=key)
        elif isinstance(address, str):  # one of several API servers: replicas started by the parent
            key = bytes.fromhex(os.environ["CSERVE_REPLICA_KEY"])
            listener = Listener(address, family="AF_UNIX", authkey=key)
        else:
            key = replica_key()
            listener = Listener(address, family="AF_INET", authkey=key)
        wire_address = listener.address if not isinstance(address, tuple) else f"{address[0]}:{listener.address[1]}"
        cores = rank_cores(local) if local else []
        env = {**os.environ, "CSERVE_REPLICA_KEY": key.hex()}
        self._procs: list[Optional[ChildProcess]] = [None] * size  # None: a replica of another node
        for j in range(local):
            self._procs[start_index + j] = start_replica(start_index + j, wire_address, cores[j], config, env,
                                                         tokenizer, launch)
        self._conns: list = [None] * size
        infos: list = [None] * size
        try:
            if local < size:
                logger.info("Data parallelism: waiting for %d replicas of other nodes at %s", size - local,
                            wire_address)
            for _ in range(size):
                conn = self._accept(listener)
                _, index, info = conn.recv()
                if not 0 <= index < size or self._conns[index] is not None:
                    conn.close()
                    self._kill_all()
                    raise RuntimeError(f"a data-parallel replica connected as rank {index}, which is not one of "
                                       f"the {size} ranks or is taken (check --data-parallel-start-rank)")
                self._conns[index] = conn
                infos[index] = info
        finally:
            listener.close()  # removes the socket file
            if folder is not None and not os.listdir(folder):
                os.rmdir(folder)
        info = dict(infos[0])
        info["kv_cache_tokens"] = sum(i["kv_cache_tokens"] for i in infos)
        info["max_concurrency"] = sum(i["max_concurrency"] for i in infos)
        self._info = _Info(info)
        per_replica = max(1, infos[0]["kv_cache_tokens"] // max(1, infos[0]["block_size"]))
        self._prefixes = PrefixPlacement(size, infos[0]["block_size"], per_replica)
        for i in range(size):
            threading.Thread(target=self._read, args=(i,), daemon=True, name=f"cserve-dp{i}").start()
        logger.info("Data parallelism: %d replicas (%d here), cores %s", size, local,
                    " | ".join(",".join(map(str, c)) if c else "any" for c in cores))

    def _accept(self, listener: Listener):
        """The next replica's connection; a replica that exits first fails the start."""
        result: dict = {}

        def accept() -> None:
            try:
                result["conn"] = listener.accept()
            except OSError as e:
                result["error"] = e

        t = threading.Thread(target=accept, daemon=True)
        t.start()
        while t.is_alive():
            t.join(0.2)
            for i, p in enumerate(self._procs):
                if p is not None and p.poll() is not None:
                    self._kill_all()
                    raise RuntimeError(f"data-parallel replica {i} exited while starting (status {p.returncode})")
        if "error" in result:
            raise RuntimeError(f"data-parallel replicas did not connect: {result['error']}")
        return result["conn"]

    # --- what the servers call ------------------------------------------------------------------
    def model_info(self):
        return self._info

    def start_loop(self) -> None:
        pass

    def stop_loop(self) -> None:
        pass

    def output_fd(self) -> int:
        return self._read_fd

    def drain_outputs(self) -> list:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            outs, self._outputs = self._outputs, []
        return outs

    def add_request(self, request_id: str, prompt: list, params: Any, priority: int = 0,
                    cache_salt: str = "") -> None:
        from cserve import _core

        if self._dead is not None:
            raise _core.EngineDeadError(f"the engine is dead: {self._dead}")
        try:
            wire = params_to_wire(params, self._serialize)
        except ValueError as e:
            raise ValueError(f"{e} (with --data-parallel-size, grammars travel to the replicas serialized: the "
                             "guidance backend is not available)") from None
        with self._lock:
            r = self._place(prompt, cache_salt)
            self._in_flight[r] += params.n
            self._owner[request_id] = r
            self._remaining[request_id] = params.n
            self._conns[r].send(("add", self._tag + request_id, list(prompt), wire, priority, cache_salt))
            while request_id not in self._acks and self._dead is None:
                self._ack_cv.wait(timeout=1.0)
            kind, message = self._acks.pop(request_id, (None, None))
            if kind is not None or self._dead is not None:
                self._in_flight[r] -= params.n
                self._owner.pop(request_id, None)
                self._remaining.pop(request_id, None)
        if self._dead is not None and kind is None:
            raise _core.EngineDeadError(f"the engine is dead: {self._dead}")
        if kind == "EngineDeadError":
            raise _core.EngineDeadError(message)
        if kind is not None:
            raise ValueError(message) if kind == "ValueError" else RuntimeError(message)

    # The most sequences a replica may hold beyond the least loaded one and still get a request for
    # its cached prefix: a cached prefix saves its prefill, but a queue costs every request in it.
    PREFIX_SLACK = 4

    def _place(self, prompt: list, salt: str) -> int:
        """The replica for a new request (under the lock)."""
        load = [mine + other for mine, other in zip(self._in_flight, self._others)]
        least = min(range(self.size), key=lambda i: load[i])
        if self.placement == "round_robin":
            r, self._next = self._next, (self._next + 1) % self.size
            return r
        if self.placement == "least_loaded":
            return least
        hashes = self._prefixes.hashes(prompt, salt)
        best, best_len = least, self._prefixes.matched(least, hashes)
        for i in range(self.size):
            n = self._prefixes.matched(i, hashes)
            if n > best_len and load[i] <= load[least] + self.PREFIX_SLACK:
                best, best_len = i, n
        self._prefixes.remember(best, hashes)
        return best

    def _serialize(self, grammar: Any) -> str:
        if self.serialize_grammar is None:
            raise ValueError("structured outputs need the server's grammar service")
        return self.serialize_grammar(grammar)

    def abort(self, request_id: str) -> None:
        with self._lock:
            r = self._owner.get(request_id)
            if r is not None and self._dead is None:
                self._conns[r].send(("abort", self._tag + request_id))

    def stats(self):
        with self._lock:
            return _Stats(list(self._stats))

    def replica_stats(self) -> list:
        """Each replica's own load and counters (the stats() fields), for per-engine metrics."""
        with self._lock:
            return [_Stats([s]) for s in self._stats]

    def replica_loads(self) -> list[int]:
        """Sequences in flight on each replica."""
        with self._lock:
            return list(self._in_flight)

    def reset_prefix_cache(self) -> bool:
        with self._lock:
            self._prefixes.forget()
            self._resets.clear()
            for conn in self._conns:
                conn.send(("reset_prefix_cache",))
            while len(self._resets) < self.size and self._dead is None:
                self._ack_cv.wait(timeout=1.0)
            return self._dead is None and all(self._resets.values())

    def is_dead(self) -> bool:
        return self._dead is not None

    def dead_reason(self) -> str:
        return self._dead or ""

    def kill(self, reason: str) -> None:
        self._die(reason)

    def shutdown(self) -> None:
        self._stopping = True
        with self._lock:
            for conn in self._conns:
                try:
                    conn.send(("shutdown",))
                except OSError:
                    pass
        wait_or_kill(self._procs, 15)

    # --- inside -----------------------------------------------------------------------------------
    def _read(self, index: int) -> None:
        conn = self._conns[index]
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                if not self._stopping:
                    proc = self._procs[index]
                    if proc is None:
                        self._die(f"data-parallel replica {index} (on another node) disconnected")
                    else:
                        self._die(f"data-parallel replica {index} exited (status {proc.wait()})")
                return
            kind = msg[0]
            with self._lock:
                if kind == "out":
                    outs = [output_from_wire(t) for t in msg[1]]
                    for o in outs:
                        o.request_id = o.request_id[len(self._tag):]
                    for o in outs:
                        o.engine = index
                        if o.finished:
                            self._in_flight[index] -= 1
                            self._remaining[o.request_id] = self._remaining.get(o.request_id, 1) - 1
                            if self._remaining[o.request_id] <= 0:
                                self._remaining.pop(o.request_id, None)
                                self._owner.pop(o.request_id, None)
                    self._outputs.extend(outs)
                    self._stats[index] = msg[2]
                    self._others[index] = max(0, msg[3][0] - msg[3][1])
                elif kind == "stats":
                    self._stats[index] = msg[2]
                    self._others[index] = max(0, msg[3][0] - msg[3][1])
                elif kind == "ack":
                    self._acks[msg[1][len(self._tag):]] = (msg[2], msg[3])
                    self._ack_cv.notify_all()
                elif kind == "reset":
                    self._resets[msg[1]] = msg[2]
                    self._ack_cv.notify_all()
            if kind == "out":
                os.write(self._write_fd, b"x")

    def _die(self, reason: str) -> None:
        with self._lock:
            if self._dead is not None:
                return
            self._dead = reason  # the front end then ends every request in flight with the error
            for conn in self._conns:
                try:
                    conn.send(("kill", reason))
                except OSError:
                    pass
            self._ack_cv.notify_all()
        logger.error("%s: the engine is dead", reason)
        os.write(self._write_fd, b"x")

    def _kill_all(self) -> None:
        for p in self._procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
