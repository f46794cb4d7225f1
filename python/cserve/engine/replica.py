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
from typing import Optional

from cserve.engine.data_parallel import connect_front_end, output_to_wire, params_from_wire, stats_to_wire

STATS_PERIOD = 0.5  # seconds between load reports while idle


def serve(index: int, address: str, config, tokenizer: str) -> int:
    from cserve.engine.tensor_parallel import start_engine

    engine, ranks = start_engine(config)
    conn = connect_front_end(address)
    info = engine.model_info()
    conn.send(("ready", index, {name: getattr(info, name) for name in dir(info) if not name.startswith("_")}))
    grammars = None  # a GrammarCompiler for this vocabulary, made with the first constrained request
    engine.start_loop()
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ, "conn")
    sel.register(engine.output_fd(), selectors.EVENT_READ, "outputs")
    last_stats = 0.0
    try:
        while True:
            for key, _ in sel.select(timeout=STATS_PERIOD):
                if key.data == "outputs":
                    try:
                        os.read(engine.output_fd(), 8)
                    except BlockingIOError:
                        pass
                    outs = engine.drain_outputs()
                    if outs:
                        conn.send(("out", [output_to_wire(o) for o in outs], stats_to_wire(engine.stats())))
                    continue
                try:
                    msg = conn.recv()
                except EOFError:
                    return 0  # the front end is gone
                kind = msg[0]
                if kind == "add":
                    _, rid, prompt, wire, priority, salt = msg
                    try:
                        if wire.get("grammar") is not None and grammars is None:
                            grammars = _grammar_compiler(tokenizer, info)
                        engine.add_request(rid, prompt, params_from_wire(wire, grammars), priority, salt)
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
                    return 0
            now = time.monotonic()
            if now - last_stats >= STATS_PERIOD:
                conn.send(("stats", index, stats_to_wire(engine.stats())))
                last_stats = now
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
