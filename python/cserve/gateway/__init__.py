"""cserve as the worker of a gateway: registration, heartbeats and log streaming (docs/gateway.md).

One client per gateway kind (ours, sglang-router, vllm-router) behind one interface
(cserve.gateway.clients); GatewayWorker runs them as tasks on the server's event loop."""

from cserve.gateway.clients import KINDS, GatewayClient, GatewayError, GatewayRejected, GatewayUnavailable
from cserve.gateway.worker import GatewayWorker

__all__ = ["GatewayWorker", "GatewayClient", "GatewayError", "GatewayRejected", "GatewayUnavailable", "KINDS"]
