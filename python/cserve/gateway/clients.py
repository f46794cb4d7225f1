"""One client per gateway kind behind one interface: register, heartbeat, send_logs, deregister.

- cserve: our protocol (docs/gateway.md): POST /v1/workers/register, POST /v1/workers/{id}/heartbeat,
  POST /v1/workers/{id}/logs, DELETE /v1/workers/{id}.
- sglang-router (the SGLang Model Gateway): POST /workers {url, model_id, labels} -> 202 {worker_id};
  GET /workers/{id} tells whether it still knows us; DELETE /workers/{id}.
- vllm-router (and routers with the legacy API): POST /add_worker?url=, GET /list_workers -> {urls},
  POST /remove_worker?url=.

Every call raises GatewayUnavailable when the gateway cannot be reached or answers with a server error
(retry later) and GatewayRejected when it refuses the request (a 4xx other than 404/408/429)."""

from __future__ import annotations

from typing import Optional

import httpx

from cserve.gateway.registration import Registration, with_scheme

KINDS = ("cserve", "sglang-router", "vllm-router")
PROTOCOL = "cserve-gateway"
PROTOCOL_VERSION = 1
# vllm-router answers /add_worker only once it has polled the worker's /health.
ADD_WORKER_TIMEOUT = 30.0


class GatewayError(Exception):
    pass


class GatewayUnavailable(GatewayError):
    """Not reachable, timed out, or a 5xx/408/429: try again later."""


class GatewayRejected(GatewayError):
    """The gateway answered and refused the request."""


def _check(response: httpx.Response, what: str, ok: tuple = (200, 201, 202, 204)) -> httpx.Response:
    if response.status_code in ok:
        return response
    text = response.text[:300]
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise GatewayUnavailable(f"{what}: HTTP {response.status_code} {text}")
    raise GatewayRejected(f"{what}: HTTP {response.status_code} {text}")


async def _send(http: httpx.AsyncClient, method: str, url: str, what: str, **kw) -> httpx.Response:
    try:
        return await http.request(method, url, **kw)
    except httpx.HTTPError as e:  # connection refused, timeouts, protocol errors
        raise GatewayUnavailable(f"{what}: {type(e).__name__}: {e}") from e


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class GatewayClient:
    """The interface. heartbeat returns False when the gateway no longer knows this worker (it
    restarted, or dropped us): the caller registers again."""

    kind = ""
    streams_logs = False

    def __init__(self, http: httpx.AsyncClient, address: str) -> None:
        self.http = http
        self.address = with_scheme(address)

    def url(self, path: str) -> str:
        return self.address + path

    async def register(self, reg: Registration) -> None:
        raise NotImplementedError

    async def heartbeat(self, reg: Registration, load: dict) -> bool:
        raise NotImplementedError

    async def send_logs(self, reg: Registration, records: list, dropped: int) -> bool:
        """False when the gateway does not know this worker; routers have no log endpoint."""
        return True

    async def deregister(self, reg: Registration) -> None:
        raise NotImplementedError


class CserveGatewayClient(GatewayClient):
    kind = "cserve"
    streams_logs = True

    async def register(self, reg: Registration) -> None:
        _check(await _send(self.http, "POST", self.url("/v1/workers/register"), "register", json=reg.body()),
               "register")

    async def heartbeat(self, reg: Registration, load: dict) -> bool:
        r = await _send(self.http, "POST", self.url(f"/v1/workers/{reg.worker_id}/heartbeat"), "heartbeat",
                        json={"worker_id": reg.worker_id, "load": load})
        if r.status_code == 404:
            return False
        _check(r, "heartbeat")
        return True

    async def send_logs(self, reg: Registration, records: list, dropped: int) -> bool:
        r = await _send(self.http, "POST", self.url(f"/v1/workers/{reg.worker_id}/logs"), "logs",
                        json={"worker_id": reg.worker_id, "records": records, "dropped": dropped})
        if r.status_code == 404:
            return False
        _check(r, "logs")
        return True

    async def deregister(self, reg: Registration) -> None:
        _check(await _send(self.http, "DELETE", self.url(f"/v1/workers/{reg.worker_id}"), "deregister"),
               "deregister", ok=(200, 202, 204, 404))


class SGLangRouterClient(GatewayClient):
    """The SGLang Model Gateway's worker API. The router polls the worker's /health itself and reads
    /server_info (or /get_server_info) and /model_info (or /get_model_info) when it adds it; the
    heartbeat only checks that the router still lists this worker."""

    kind = "sglang-router"

    def __init__(self, http: httpx.AsyncClient, address: str) -> None:
        super().__init__(http, address)
        self.router_id: Optional[str] = None

    def body(self, reg: Registration) -> dict:
        labels = {"backend": reg.backend, "cserve_version": reg.version, "cserve_worker_id": reg.worker_id}
        return {"url": reg.url, "model_id": reg.model, "labels": labels}

    async def register(self, reg: Registration) -> None:
        # 202: queued; the router answers with the id of the worker it already has for this URL.
        r = _check(await _send(self.http, "POST", self.url("/workers"), "register", json=self.body(reg)), "register")
        try:
            self.router_id = r.json().get("worker_id") or self.router_id
        except ValueError:
            pass

    async def _find(self, reg: Registration) -> Optional[dict]:
        r = _check(await _send(self.http, "GET", self.url("/workers"), "list workers"), "list workers")
        for w in r.json().get("workers", []):
            if _same_url(str(w.get("url", "")), reg.url):
                return w
        return None

    async def heartbeat(self, reg: Registration, load: dict) -> bool:
        if self.router_id is None:
            found = await self._find(reg)
            self.router_id = found.get("id") if found else None
            return found is not None
        r = await _send(self.http, "GET", self.url(f"/workers/{self.router_id}"), "heartbeat")
        if r.status_code in (400, 404):  # an id it does not know (it restarted)
            self.router_id = None
            return False
        body = _check(r, "heartbeat").json()
        # A registration the router could not complete shows as a failed job, not as a worker.
        return _same_url(str(body.get("url", "")), reg.url) and "is_healthy" in body

    async def deregister(self, reg: Registration) -> None:
        router_id = self.router_id
        if router_id is None:
            found = await self._find(reg)
            router_id = found.get("id") if found else None
        if router_id is None:
            return
        _check(await _send(self.http, "DELETE", self.url(f"/workers/{router_id}"), "deregister"),
               "deregister", ok=(200, 202, 204, 404))
        self.router_id = None


class VLLMRouterClient(GatewayClient):
    """vllm-router's worker API (the legacy one of sglang-router, which it forked). /add_worker
    answers once the router has polled the worker's /health; adding a known URL is a 400 saying it
    already exists, which counts as registered."""

    kind = "vllm-router"

    async def register(self, reg: Registration) -> None:
        r = await _send(self.http, "POST", self.url("/add_worker"), "register", params={"url": reg.url},
                        timeout=ADD_WORKER_TIMEOUT)
        if r.status_code == 400 and "already exists" in r.text:
            return
        _check(r, "register")

    async def heartbeat(self, reg: Registration, load: dict) -> bool:
        r = _check(await _send(self.http, "GET", self.url("/list_workers"), "heartbeat"), "heartbeat")
        return any(_same_url(str(u), reg.url) for u in r.json().get("urls", []))

    async def deregister(self, reg: Registration) -> None:
        _check(await _send(self.http, "POST", self.url("/remove_worker"), "deregister", params={"url": reg.url}),
               "deregister", ok=(200, 202, 204, 404))


CLIENTS = {c.kind: c for c in (CserveGatewayClient, SGLangRouterClient, VLLMRouterClient)}


async def _probe(http: httpx.AsyncClient, url: str) -> Optional[httpx.Response]:
    """GET url; None when nothing answered at all."""
    try:
        return await http.get(url)
    except httpx.HTTPError:
        return None


def _json(r: Optional[httpx.Response]) -> Optional[dict]:
    if r is None or r.status_code != 200:
        return None
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


async def detect_kind(http: httpx.AsyncClient, address: str) -> str:
    """Which protocol the gateway at `address` speaks, from three GETs:
    GET /v1/gateway answering {"protocol": "cserve-gateway"}: ours; else GET /list_workers answering
    {"urls": [...]}: vllm-router (or a router with the same legacy API); else GET /workers answering
    {"workers": [...]}: sglang-router; else, if anything answered at all, ours. Raises
    GatewayUnavailable when nothing answers (the caller retries)."""
    base = with_scheme(address)
    r = await _probe(http, base + "/v1/gateway")
    if r is None:
        raise GatewayUnavailable(f"{base}: no answer to GET /v1/gateway")
    info = _json(r)
    if info is not None and info.get("protocol") == PROTOCOL:
        return "cserve"
    listing = _json(await _probe(http, base + "/list_workers"))
    if listing is not None and isinstance(listing.get("urls"), list):
        return "vllm-router"
    workers = _json(await _probe(http, base + "/workers"))
    if workers is not None and isinstance(workers.get("workers"), list):
        return "sglang-router"
    return "cserve"


def make_client(kind: str, http: httpx.AsyncClient, address: str) -> GatewayClient:
    if kind not in CLIENTS:
        raise ValueError(f"unknown gateway kind {kind!r}; expected auto or one of {', '.join(KINDS)}")
    return CLIENTS[kind](http, address)
