"""GatewayWorker: registers this server with a gateway once it serves, sends heartbeats with its
load, streams its log records, and deregisters at shutdown (docs/gateway.md).

Everything runs as tasks on the server's event loop, with short timeouts, so the gateway can never
slow or stop serving: an unreachable gateway means retries with capped exponential backoff and
jitter; a gateway that forgot the worker (it restarted) gets a new registration; stop() is bounded."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Optional

import httpx

from cserve.gateway.clients import (GatewayClient, GatewayError, GatewayRejected, GatewayUnavailable, detect_kind,
                                    make_client)
from cserve.gateway.logs import LogBuffer, LogStreamHandler
from cserve.gateway.registration import (LoadMeter, Registration, build_registration, default_worker_url,
                                         local_url, with_scheme)

logger = logging.getLogger("cserve.gateway")

REQUEST_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
LOG_INTERVAL = 1.0  # seconds between log batches
LOG_BATCH = 1000  # records per batch at most
LOG_CAPACITY = 10000  # records buffered at most (the oldest are dropped beyond)
STOP_TIMEOUT = 3.0  # stop() returns within this many seconds, whatever the gateway does
READY_POLL = 0.2  # seconds between checks of the server's own /health before registering


class Backoff:
    """Exponential backoff with jitter: base * 2**n, capped, each delay drawn from [50%, 100%]."""

    def __init__(self, base: float = 0.5, cap: float = 30.0) -> None:
        self.base, self.cap, self.attempts = base, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempts, 30)))
        self.attempts += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempts = 0


class _QuietRequests(logging.Filter):
    """Drops httpx's per-request INFO lines for calls to the gateway (one a second with logs) and
    to the server's own /health before registering."""

    def __init__(self, *addresses: str) -> None:
        super().__init__()
        self.addresses = [a for a in addresses if a]

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.args)
        return not (record.levelno <= logging.INFO and any(a in text for a in self.addresses))


class GatewayWorker:
    """GatewayWorker(state, args): `await start()` once the server's startup hook runs (it waits by
    itself until the server answers its own /health, then registers); `await stop()` at shutdown.

    Reads from args (getattr, with defaults): gateway_address, gateway_kind (auto), heartbeat_interval
    (30 s), log_streaming (True), worker_url (derived from host/port when unset), backend (vllm)."""

    def __init__(self, state, args) -> None:
        self.state = state
        self.args = args
        address = getattr(args, "gateway_address", None)
        self.address: Optional[str] = with_scheme(address) if address else None
        self.kind_flag = getattr(args, "gateway_kind", None) or "auto"
        self.interval = float(getattr(args, "heartbeat_interval", None) or 30.0)
        self.log_streaming = bool(getattr(args, "log_streaming", True))
        worker_url = getattr(args, "worker_url", None)
        self.worker_url: Optional[str] = with_scheme(worker_url) if worker_url else None
        self.client: Optional[GatewayClient] = None
        self.registration: Optional[Registration] = None
        self.registered = False
        self.num_registrations = 0
        self.buffer = LogBuffer(LOG_CAPACITY)
        self.handler: Optional[LogStreamHandler] = None
        self.load = LoadMeter(state)
        self._http: Optional[httpx.AsyncClient] = None
        self._tasks: list[asyncio.Task] = []
        self._quiet: Optional[_QuietRequests] = None
        self._stopped = False
        self._problem: Optional[str] = None  # the last failure logged, so a long outage logs once

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def kind(self) -> Optional[str]:
        return self.client.kind if self.client is not None else None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns at once; registration, heartbeats and log streaming run as background tasks."""
        if not self.enabled or self._tasks or self._stopped:
            return
        self._http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
        self._quiet = _QuietRequests(self.address, local_url(self.args))
        logging.getLogger("httpx").addFilter(self._quiet)
        if self.log_streaming and self.kind_flag in ("auto", "cserve"):
            # Records are buffered from now on; they are sent once the gateway is known to take them.
            self.handler = LogStreamHandler(self.buffer)
            self.handler.attach()
        self._tasks.append(asyncio.ensure_future(self._run()))

    async def stop(self) -> None:
        """Stops the tasks, sends the last log records and deregisters, all within STOP_TIMEOUT
        seconds; never raises. Safe to call twice, or without start()."""
        if self._stopped:
            return
        self._stopped = True
        if self.handler is not None:
            self.handler.detach()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await asyncio.wait_for(self._farewell(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            logger.warning("Gateway %s: no answer within %.0f s at shutdown; not deregistered", self.address,
                           STOP_TIMEOUT)
        except Exception as e:  # never let the gateway fail a shutdown
            logger.warning("Gateway %s: deregistration failed: %s", self.address, e)
        finally:
            if self._http is not None:
                await self._http.aclose()
            if self._quiet is not None:
                logging.getLogger("httpx").removeFilter(self._quiet)

    async def _farewell(self) -> None:
        if self.client is None or self.registration is None or not self.registered:
            return
        if self.client.streams_logs and self.log_streaming and len(self.buffer):
            try:
                await self._send_logs()
            except GatewayError:
                pass
        await self.client.deregister(self.registration)
        self.registered = False
        logger.info("Deregistered from gateway %s", self.address)

    # --- the tasks ------------------------------------------------------------------------------

    def _note(self, problem: str) -> None:
        """Logs a failure once per kind of failure, not once per retry."""
        key = problem[:60]
        if key != self._problem:
            self._problem = key
            logger.warning("Gateway %s: %s (retrying in the background; serving continues)", self.address, problem)

    def _recovered(self) -> None:
        self._problem = None

    async def _wait_until_serving(self) -> None:
        """Polls the server's own /health until it answers 200 (the server then listens and the
        engine runs); a TLS error also counts as listening (a client certificate may be required)."""
        uds = getattr(self.args, "uds", None)
        base = local_url(self.args) or "http://localhost"
        transport = httpx.AsyncHTTPTransport(uds=uds, verify=False) if uds else None
        async with httpx.AsyncClient(timeout=httpx.Timeout(2.0), verify=False, transport=transport,
                                     trust_env=False) as http:
            while True:
                try:
                    if (await http.get(base + "/health")).status_code == 200:
                        return
                except httpx.ConnectError as e:
                    if "SSL" in str(e) or "TLS" in str(e) or "certificate" in str(e).lower():
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(READY_POLL)

    async def _resolve(self) -> bool:
        """The worker URL and the client; False when there is no URL to register."""
        if self.worker_url is None:
            loop = asyncio.get_running_loop()
            self.worker_url = await loop.run_in_executor(None, default_worker_url, self.args, self.address)
            if self.worker_url is None:
                logger.error("Gateway %s: this server listens on a Unix socket; pass --worker-url with the URL "
                             "the gateway should use. Not registering.", self.address)
                return False
        if self.registration is None:
            self.registration = build_registration(self.state, self.args, self.worker_url, self.log_streaming)
        if self.client is None:
            kind = self.kind_flag
            if kind == "auto":
                kind = await detect_kind(self._http, self.address)
                logger.info("Gateway %s speaks the %s protocol", self.address, kind)
            self.client = make_client(kind, self._http, self.address)
            if not self.client.streams_logs and self.handler is not None:
                # Routers have no log endpoint: stop buffering records nobody will take.
                self.handler.detach()
                self.handler = None
        return True

    async def _run(self) -> None:
        await self._wait_until_serving()
        self.load.sample()  # the baseline of the first heartbeat's throughput
        backoff = Backoff(cap=max(1.0, min(30.0, self.interval)))
        log_task: Optional[asyncio.Task] = None
        while True:
            try:
                if self.client is None or self.registration is None:
                    if not await self._resolve():
                        return
                if not self.registered:
                    await self.client.register(self.registration)
                    self.registered = True
                    self.num_registrations += 1
                    self._recovered()
                    backoff.reset()
                    logger.info("Registered with gateway %s (%s) as %s: %s serving %s", self.address, self.kind,
                                self.registration.worker_id, self.registration.url, ", ".join(self.registration.models))
                    if log_task is None and self.handler is not None and self.client.streams_logs:
                        log_task = asyncio.ensure_future(self._stream_logs())
                        self._tasks.append(log_task)
                await asyncio.sleep(self.interval)
                if not await self.client.heartbeat(self.registration, self.load.sample()):
                    self.registered = False
                    logger.info("Gateway %s no longer knows this worker; registering again", self.address)
                    continue
                self._recovered()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except GatewayRejected as e:
                self._note(f"refused: {e}")
                await asyncio.sleep(backoff.next())
            except GatewayUnavailable as e:
                self._note(f"unreachable: {e}")
                await asyncio.sleep(backoff.next())
            except Exception as e:  # a bug or an odd answer must not end the task
                self._note(f"unexpected error: {type(e).__name__}: {e}")
                await asyncio.sleep(backoff.next())

    async def _send_logs(self) -> None:
        records, dropped = self.buffer.take(LOG_BATCH)
        if not records and not dropped:
            return
        try:
            known = await self.client.send_logs(self.registration, records, dropped)
        except BaseException:
            self.buffer.restore(records, dropped)
            raise
        if not known:
            self.buffer.restore(records, dropped)
            self.registered = False  # the heartbeat task registers again

    async def _stream_logs(self) -> None:
        backoff = Backoff(base=LOG_INTERVAL, cap=max(LOG_INTERVAL, min(30.0, self.interval)))
        while True:
            await asyncio.sleep(LOG_INTERVAL)
            if not self.registered:
                continue
            try:
                while self.registered and len(self.buffer) >= LOG_BATCH:
                    await self._send_logs()
                await self._send_logs()
                backoff.reset()
            except GatewayError:
                await asyncio.sleep(backoff.next())  # the heartbeat task reports the outage
            except Exception as e:
                self._note(f"log streaming error: {type(e).__name__}: {e}")
                await asyncio.sleep(backoff.next())
