"""What a worker tells its gateway: who it is (Registration: id, URL, models, backend, backend_args
with secrets redacted, version, capabilities) and how busy it is (LoadMeter: running, waiting, KV
cache usage, recent throughput). Also the URLs: the one the gateway and clients use to reach this
worker, and the local one the worker checks itself on before registering."""

from __future__ import annotations

import ipaddress
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any, Optional
from urllib.parse import urlsplit

REDACTED = "***"
# Option names (argparse dests) whose values are secrets: any with one of these words, or api_key.
_SECRET_WORDS = frozenset({"token", "password", "passwd", "secret", "credential", "credentials"})
_SECRET_DESTS = frozenset({"ssl_keyfile"})
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def with_scheme(url: str) -> str:
    """http:// when the URL has no scheme; no trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def is_secret(dest: str) -> bool:
    words = dest.lower().replace("-", "_").split("_")
    return dest in _SECRET_DESTS or "api_key" in dest.lower() or bool(_SECRET_WORDS.intersection(words))


def _json_ready(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_ready(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return repr(value)


def _redact(dest: str, value: Any) -> Any:
    """The value as JSON, "***" in place of a secret that is set (one per item of a list)."""
    if not is_secret(dest) or value in (None, False, "", []):
        return _json_ready(value)
    return [REDACTED] * len(value) if isinstance(value, (list, tuple)) else REDACTED


def redacted_args(args) -> dict:
    """vars(args), JSON-ready, secrets redacted: the fallback for a namespace that cserve.cli
    cannot describe."""
    return {dest: _redact(dest, value) for dest, value in sorted(vars(args).items()) if not dest.startswith("_")}


def backend_args(args) -> dict:
    """The effective flag values of the dialect the worker was started with, secrets redacted: the
    CLI's description of them (cserve.cli.args.backend_args) where it has one, else every option of
    the namespace. Either way each value is checked for secrets once more here."""
    try:
        from cserve.cli.args import backend_args as cli_backend_args
    except ImportError:  # a CLI without it: describe the namespace here
        return redacted_args(args)
    try:
        values = cli_backend_args(args)
    except Exception:  # a namespace the CLI did not parse (an embedding program's own)
        return redacted_args(args)
    return {dest: _redact(dest, value) for dest, value in values.items()}


def _host_for_url(host: str) -> str:
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


def scheme_of(args) -> str:
    return "https" if getattr(args, "ssl_certfile", None) else "http"


def local_url(args) -> Optional[str]:
    """Where this process itself can reach its HTTP server (for the readiness check): loopback when
    it listens on every interface; None for a Unix socket (see local_uds)."""
    if getattr(args, "uds", None):
        return None
    host = getattr(args, "host", None) or ""
    if host in _WILDCARD_HOSTS:
        host = "::1" if host in ("::", "[::]") else "127.0.0.1"
    return f"{scheme_of(args)}://{_host_for_url(host.strip('[]'))}:{getattr(args, 'port', 8000)}"


def route_address(target_host: str, target_port: int) -> Optional[str]:
    """The local address this machine uses to reach target_host (the kernel's route choice; a UDP
    connect sends nothing). Blocking (name resolution): call it off the event loop."""
    try:
        infos = socket.getaddrinfo(target_host, target_port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, _, _, _, sockaddr in infos:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(sockaddr)
                return s.getsockname()[0]
        except OSError:
            continue
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_worker_url(args, gateway_address: Optional[str]) -> Optional[str]:
    """The URL the gateway (and the clients it routes) should use to reach this worker, when
    --worker-url is not given: --host when it names one address; when the server listens on every
    interface, loopback for a gateway on this machine, else the address of the interface that routes
    to the gateway (what a gateway on another machine can reach). None for a Unix socket: a gateway
    needs --worker-url then. Blocking (may resolve the gateway's name): call it off the event loop."""
    if getattr(args, "uds", None):
        return None
    host = getattr(args, "host", None) or ""
    port = getattr(args, "port", 8000)
    if host in _WILDCARD_HOSTS:
        host = "127.0.0.1"
        if gateway_address:
            parts = urlsplit(with_scheme(gateway_address))
            gw_host = parts.hostname or ""
            if gw_host and not _is_loopback(gw_host):
                gw_port = parts.port or (443 if parts.scheme == "https" else 80)
                host = route_address(gw_host, gw_port) or socket.getfqdn()
    return f"{scheme_of(args)}://{_host_for_url(host.strip('[]'))}:{port}"


@dataclass
class Registration:
    """The body of a registration (docs/gateway.md, "Register")."""

    worker_id: str
    url: str
    models: list[str]
    backend: str
    backend_args: dict
    version: str
    capabilities: dict
    model_path: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    started_at: float = field(default_factory=time.time)

    @property
    def model(self) -> str:
        return self.models[0] if self.models else ""

    def body(self) -> dict:
        return asdict(self)


def capabilities(state, args, log_streaming: bool) -> dict:
    backend = getattr(args, "backend", None) or "vllm"
    apis = ["openai"] + (["sglang"] if backend == "sglang" else [])
    if getattr(args, "grpc_port", None) is not None:
        apis.append("grpc")
    caps: dict[str, Any] = {"apis": apis, "streaming": True, "log_streaming": log_streaming,
                            "max_model_len": getattr(state, "max_model_len", None)}
    grpc_port = getattr(args, "grpc_port", None)
    if grpc_port is not None:
        caps["grpc_port"] = grpc_port
    try:
        info = state.engine.model_info
        caps["max_num_seqs"] = info.max_num_seqs
    except Exception:  # an engine without model_info: leave it out
        pass
    return caps


def build_registration(state, args, url: str, log_streaming: bool) -> Registration:
    from cserve import __version__

    return Registration(
        worker_id=str(uuid.uuid4()), url=url, models=list(state.served_names),
        backend=getattr(args, "backend", None) or "vllm", backend_args=backend_args(args), version=__version__,
        capabilities=capabilities(state, args, log_streaming), model_path=str(getattr(state, "model_path", "")))


class LoadMeter:
    """The load a heartbeat carries: the engine's gauges now, throughput since the last sample."""

    def __init__(self, state) -> None:
        self.state = state
        self._last: Optional[tuple[float, int, int]] = None

    def sample(self) -> dict:
        engine = self.state.engine
        s = engine.stats()
        now = (time.monotonic(), int(s.prompt_tokens), int(s.generation_tokens))
        gen_rate = prompt_rate = 0.0
        if self._last is not None and now[0] > self._last[0]:
            dt = now[0] - self._last[0]
            prompt_rate = (now[1] - self._last[1]) / dt
            gen_rate = (now[2] - self._last[2]) / dt
        self._last = now
        return {"running": int(s.num_running), "waiting": int(s.num_waiting), "in_flight": int(engine.num_in_flight),
                "kv_cache_usage": float(s.kv_cache_usage), "generation_tokens_per_s": round(gen_rate, 3),
                "prompt_tokens_per_s": round(prompt_rate, 3), "draining": bool(getattr(self.state, "draining", False))}
