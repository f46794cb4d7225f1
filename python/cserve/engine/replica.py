"""One data-parallel replica: `python -m cserve.engine.replica INDEX ADDRESS [--cores LIST]
[--tokenizer PATH]`, the engine's config as JSON on stdin. It runs a whole engine (with its own
tensor/pipeline ranks, if configured) and serves the front end over a Unix socket or TCP (ADDRESS:
a path, or host:port; multiprocessing.connection, the key in CSERVE_REPLICA_KEY): requests in, outputs and load out.
Exits when the front end goes away or says so."""

from __future__ import annotations

import argparse
import os
import selectors
import sys
import time
from typing import Any, Optional

from cserve.engine.data_parallel import connect_front_end, output_to_wire, params_from_wire, stats_to_wire

STATS_PERIOD = 0.5  # seconds between load reports while idle


def serve(index: int, address: str, config, tokenizer: str) -> int:
    """Serves the front ends at `address` (several, comma-separated, with --api-server-count):
    each request's outputs go back to the front end that sent it; the load goes to all. Returns
    when every front end has gone away or said shutdown."""
    from cserve.engine.tensor_parallel import start_engine

    engine, ranks = start_engine(config)
    conns = [connect_front_end(a) for a in address.split(",")]
    info = engine.model_info()
    ready = ("ready", index, {name: getattr(info, name) for name in dir(info) if not name.startswith("_")})
    for conn in conns:
        conn.send(ready)
    grammars = None  # a GrammarCompiler for this vocabulary, made with the first constrained request
    owner: dict[str, Any] = {}  # request id -> the front end that sent it
    remaining: dict[str, int] = {}  # request id -> its sequences not finished
    engine.start_loop()
    sel = selectors.DefaultSelector()
    for conn in conns:
        sel.register(conn, selectors.EVENT_READ, "conn")
    sel.register(engine.output_fd(), selectors.EVENT_READ, "outputs")
    last_stats = 0.0

    def load(conn) -> tuple:
        """This replica's sequences in flight: all of them, and those of `conn`."""
        mine = sum(n for rid, n in remaining.items() if owner.get(rid) is conn)
        return sum(remaining.values()), mine

    def drop(conn) -> None:
        sel.unregister(conn)
        conns.remove(conn)
        for rid in [rid for rid, c in owner.items() if c is conn]:
            engine.abort(rid)  # nobody is left to read them

    try:
        while conns:
            for key, _ in sel.select(timeout=STATS_PERIOD):
                if key.data == "outputs":
                    try:
                        os.read(engine.output_fd(), 8)
                    except BlockingIOError:
                        pass
                    by_conn: dict[int, tuple] = {}
                    for o in engine.drain_outputs():
                        conn = owner.get(o.request_id)
                        if o.finish_reason is not None and o.request_id in remaining:
                            remaining[o.request_id] -= 1
                            if remaining[o.request_id] <= 0:
                                del remaining[o.request_id]
                                owner.pop(o.request_id, None)
                        if conn is not None and conn in conns:
                            by_conn.setdefault(id(conn), (conn, []))[1].append(output_to_wire(o))
                    stats = stats_to_wire(engine.stats())
                    for conn, wires in by_conn.values():
                        conn.send(("out", wires, stats, load(conn)))
                    continue
                conn = key.fileobj
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    drop(conn)  # that front end is gone
                    continue
                kind = msg[0]
                if kind == "add":
                    _, rid, prompt, wire, priority, salt = msg
                    try:
                        if wire.get("grammar") is not None and grammars is None:
                            grammars = _grammar_compiler(tokenizer, info)
                        engine.add_request(rid, prompt, params_from_wire(wire, grammars), priority, salt)
                        owner[rid], remaining[rid] = conn, wire["n"]
                        conn.send(("ack", rid, None, None))
                    except Exception as e:  # noqa: BLE001 - the front end raises it for its caller
                        conn.send(("ack", rid, type(e).__name__, str(e)))
                elif kind == "abort":
                    engine.abort(msg[1])
                elif kind == "reset_prefix_cache":
                    conn.send(("reset", index, engine.reset_prefix_cache()))
                elif kind == "kill":
                    engine.kill(msg[1])
                elif kind == "shutdown":
                    drop(conn)
            now = time.monotonic()
            if now - last_stats >= STATS_PERIOD:
                stats = stats_to_wire(engine.stats())
                for conn in conns:
                    conn.send(("stats", index, stats, load(conn)))
                last_stats = now
        return 0
    finally:
        engine.shutdown()
        if ranks is not None:
            ranks.stop()


def _grammar_compiler(tokenizer: str, info):
    """Reads back the grammars the front end compiled (same tokenizer, same vocabulary)."""
    from cserve.structured.service import grammar_vocab, local_compiler
    from cserve.tokenizer.loading import load_tokenizer

    return local_compiler(grammar_vocab(load_tokenizer(tokenizer), info.vocab_size, list(info.eos_token_ids)),
                          guidance=False)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("index", type=int)
    ap.add_argument("address")
    ap.add_argument("--cores", default="")
    ap.add_argument("--tokenizer", default="")
    return ap.parse_args(argv)


def run(index: int, address: str, config, tokenizer: str = "") -> int:
    """The replica's work, in this process (a replica process, or a Ray actor): its exit status."""
    try:
        return serve(index, address, config, tokenizer or config.model)
    except Exception as e:  # noqa: BLE001 - the reason to the log, the status to the front end
        print(f"cserve data-parallel replica {index}: {e}", file=sys.stderr, flush=True)
        return 1


def main() -> int:
    a = parse_args()
    from cserve.engine.tensor_parallel import child_config

    return run(a.index, a.address, child_config(a.cores), a.tokenizer)


if __name__ == "__main__":
    sys.exit(main())
