"""One of several API servers (--api-server-count; started by api_servers.py with its spec as
JSON on stdin): `cserve serve`'s server over the inherited listening socket, with the replicas
of the parent for its engine."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import Future


def main() -> int:
    spec = json.loads(sys.stdin.read())
    from cserve.cli.args import parse_serve_args
    from cserve.cli.main import resolve_model_args, setup_logging
    from cserve.engine.data_parallel import DataParallelEngine
    from cserve.entrypoints.openai.api_server import run_server
    from cserve.entrypoints.openai.engine_loader import engine_config_from_args

    args = parse_serve_args(spec["argv"])
    setup_logging(args)
    resolve_model_args(args)
    if spec["index"] > 0:
        args.disable_log_stats = True  # one statistics line, from the first API server (it sums all)
    config = engine_config_from_args(args)
    pending: Future = Future()

    def connect() -> None:
        t0 = time.perf_counter()
        try:
            engine = DataParallelEngine(config, spec["size"], args.tokenizer or "", local=0, address=spec["front"],
                                        placement=args.data_parallel_load_balance)
            pending.set_result((engine, config, time.perf_counter() - t0, None))
        except BaseException as e:  # noqa: BLE001 - handed to run_server
            pending.set_exception(e)

    threading.Thread(target=connect, name="cserve-connect", daemon=True).start()
    sock = socket.socket(fileno=spec["fd"])
    return run_server(args, pending, sock=sock, share=(spec["folder"], spec["index"]))


if __name__ == "__main__":
    sys.exit(main())
