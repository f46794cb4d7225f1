"""--api-server-count N > 1: N API server processes behind one port, as vLLM scales its front end
out. This process binds the port, starts the data-parallel replicas (one even with -dp 1: the
engine must outlive any one API server) and the N API servers, and supervises them:

- every API server serves the inherited listening socket (the kernel spreads connections over
  them) with its own tokenizer, templates and detokenizers, and talks to every replica through
  a Unix socket of its own; each replica sends a request's outputs back to the API server that
  sent it, and its load to all, so each places requests knowing the others' load;
- /metrics in any API server sums the request counters of all of them (each saves its own in a
  shared folder); engine gauges come from the replicas themselves;
- SIGTERM/SIGINT go to the API servers (each drains as one server does), then the replicas
  return. Any process that exits on its own stops the rest, and the command exits 1."""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

logger = logging.getLogger("cserve")


def check_api_server_count(args) -> int:
    """The number of API server processes (1: this process serves, as usual)."""
    n = args.api_server_count if args.api_server_count is not None else 1
    if n < 1:
        raise ValueError(f"api_server_count must be at least 1, got {n}")
    if n > 1:
        from cserve.engine.data_parallel_layout import layout_from_args

        layout = layout_from_args(args)
        if layout.local < layout.size or layout.hybrid:
            raise ValueError("--api-server-count > 1 needs every data-parallel replica on this node "
                             "(--data-parallel-size-local equal to --data-parallel-size)")
        if args.data_parallel_backend == "ray":
            raise ValueError("--api-server-count > 1 starts the replicas as processes of this node: it cannot "
                             "be combined with --data-parallel-backend ray")
        if args.gateway_address:
            raise ValueError("--api-server-count > 1 cannot register with a gateway (--gateway-address): "
                             "the gateway would see one worker per API server")
    return n


def _listening_socket(args) -> socket.socket:
    if args.uds:
        if os.path.exists(args.uds):
            os.unlink(args.uds)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(args.uds)
    else:
        host = args.host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_api_servers(args, argv: list[str], count: int) -> int:
    from cserve.engine.data_parallel_layout import layout_from_args
    from cserve.engine.data_parallel import start_replica
    from cserve.engine.tensor_parallel import rank_cores, wait_or_kill
    from cserve.entrypoints.openai.engine_loader import engine_config_from_args

    config = engine_config_from_args(args)
    layout = layout_from_args(args)
    folder = tempfile.mkdtemp(prefix="cserve-api-")
    fronts = [os.path.join(folder, f"front{i}") for i in range(count)]
    env = {**os.environ, "CSERVE_REPLICA_KEY": secrets.token_bytes(16).hex()}
    sock = _listening_socket(args)
    cores = rank_cores(layout.local)
    procs: list[tuple[str, subprocess.Popen]] = []
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = None
    try:
        for i in range(layout.local):
            procs.append((f"data-parallel replica {i}", start_replica(i, ",".join(fronts), cores[i], config, env,
                                                                      args.tokenizer or "")))
        for i in range(count):
            spec = {"argv": argv, "index": i, "front": fronts[i], "folder": folder, "fd": sock.fileno(),
                    "size": layout.local}
            proc = subprocess.Popen([sys.executable, "-m", "cserve.entrypoints.openai.api_server_process"],
                                    stdin=subprocess.PIPE, text=True, env=env, pass_fds=[sock.fileno()])
            proc.stdin.write(json.dumps(spec))
            proc.stdin.close()
            procs.append((f"API server {i}", proc))
        logger.info("%d API servers and %d data-parallel replicas (pids %s)", count, layout.local,
                    ", ".join(str(p.pid) for _, p in procs))
        while not stop.wait(0.2):
            gone = next(((name, p.returncode) for name, p in procs if p.poll() is not None), None)
            if gone is not None:
                failed = gone
                logger.error("%s exited (status %s): stopping the server", *gone)
                break
    finally:
        sock.close()
        servers = [p for name, p in procs if name.startswith("API")]
        for p in servers:  # each drains its requests, then tells the replicas it is done
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        wait_or_kill(servers, args.shutdown_timeout + 15)
        wait_or_kill([p for _, p in procs], 15)
        for s, handler in previous.items():
            signal.signal(s, handler)
        shutil.rmtree(folder, ignore_errors=True)
        if args.uds and os.path.exists(args.uds):
            os.unlink(args.uds)
    return 1 if failed is not None else 0

