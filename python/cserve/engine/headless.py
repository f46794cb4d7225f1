"""`cserve serve --headless`: this node runs data-parallel replicas for the head node's front end
and serves no API (vLLM's run_headless). Its --data-parallel-size-local replicas take the global
ranks from --data-parallel-start-rank, and connect to the head at
--data-parallel-address:--data-parallel-rpc-port (waiting for it if this node starts first). The
node exits when its replicas do: 0 once the head has gone away or stopped them, 1 when one
failed; SIGTERM/SIGINT stop them."""

from __future__ import annotations

import logging
import os
import signal
import threading

logger = logging.getLogger("cserve.data_parallel")


def run_headless(args, config) -> int:
    from cserve.engine.data_parallel import replica_key, start_replica
    from cserve.engine.data_parallel_layout import DEFAULT_ADDRESS, DEFAULT_RPC_PORT, layout_from_args
    from cserve.engine.tensor_parallel import rank_cores, wait_or_kill

    layout = layout_from_args(args)
    address = f"{args.data_parallel_address or DEFAULT_ADDRESS}:{args.data_parallel_rpc_port or DEFAULT_RPC_PORT}"
    cores = rank_cores(layout.local)
    env = {**os.environ, "CSERVE_REPLICA_KEY": replica_key().hex()}
    procs = [start_replica(layout.start + j, address, cores[j], config, env, args.tokenizer or "")
             for j in range(layout.local)]
    logger.info("Headless: data-parallel replicas %d..%d of %d, for the front end at %s", layout.start,
                layout.start + layout.local - 1, args.data_parallel_size, address)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.is_set() and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break  # one failed: stop the others
            stop.wait(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        wait_or_kill(procs, 15)
        for s, handler in previous.items():
            signal.signal(s, handler)
    failed = [(layout.start + j, p.returncode) for j, p in enumerate(procs) if p.returncode not in (0, -15)]
    for rank, code in failed:
        logger.error("data-parallel replica %d exited with status %s", rank, code)
    return 1 if failed and not stop.is_set() else 0
