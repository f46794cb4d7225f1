"""Where the data-parallel replicas run, from vLLM's flags (-dp, -dpl, -dpr, -dpa, -dpp,
--headless, --data-parallel-hybrid-lb / -external-lb / -rank), with vLLM's rules and messages:

- internal load balancing (the default): one front end balances over all N replicas; with
  --data-parallel-size-local L < N it starts L of them and waits for the others, started by
  `--headless` nodes, to connect to --data-parallel-address:--data-parallel-rpc-port;
- headless: this node starts its L replicas (ranks from --data-parallel-start-rank) for the head's
  front end, and serves no API;
- hybrid: each node runs a front end over only its own L replicas (an outer load balancer spreads
  the traffic over the nodes); --data-parallel-start-rank without --headless implies it;
- external (--data-parallel-rank): vLLM allows it for MoE models only, which cserve does not
  serve, so it is refused with vLLM's message."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger("cserve.data_parallel")

DEFAULT_RPC_PORT = 29550  # vLLM's ParallelConfig.data_parallel_rpc_port
DEFAULT_ADDRESS = "127.0.0.1"  # vLLM's data_parallel_master_ip


@dataclass(frozen=True)
class DataParallelLayout:
    size: int  # replicas this front end balances over (all N, or the node's own with hybrid)
    local: int  # replicas this process starts
    start: int  # the global data-parallel rank of the first of them
    address: Optional[tuple[str, int]]  # TCP: replicas of other nodes meet the head's front end there
    headless: bool
    hybrid: bool

    @property
    def first_label(self) -> int:
        """vLLM's engine label of this front end's first replica (its global rank)."""
        return self.start if self.hybrid else 0


def layout_from_args(args) -> DataParallelLayout:
    size = args.data_parallel_size
    headless = bool(args.headless)
    hybrid = bool(args.data_parallel_hybrid_lb)
    if headless and hybrid:
        raise ValueError("data_parallel_hybrid_lb is not applicable in headless mode")
    if hybrid and args.data_parallel_external_lb:
        raise ValueError("data_parallel_hybrid_lb and data_parallel_external_lb cannot both be True.")
    if size > 1 and (args.data_parallel_external_lb or args.data_parallel_rank is not None):
        raise ValueError("Non-MoE models do not support external data parallel mode. For external load "
                         "balancing, launch independent vLLM instances without --data-parallel-* arguments.")
    local = args.data_parallel_size_local
    start = args.data_parallel_start_rank or 0
    if local is None:
        if hybrid:
            raise ValueError("data_parallel_size_local must be set to use data_parallel_hybrid_lb.")
        local = size
    else:
        if start and not headless:
            hybrid = True  # vLLM infers hybrid load balancing from a start rank
        if local == size:
            hybrid = False  # one node holds them all
    if not 0 <= local <= size:
        raise ValueError(f"data_parallel_size_local ({local}) must be between 0 and data_parallel_size ({size})")
    if not 0 <= start or start + local > size:
        raise ValueError(f"data_parallel_start_rank ({start}) + data_parallel_size_local ({local}) must not "
                         f"exceed data_parallel_size ({size})")
    if headless:
        if local <= 0:
            raise ValueError("data_parallel_size_local must be > 0 in headless mode")
        if (args.api_server_count or 0) > 1:
            raise ValueError("api_server_count can't be set in headless mode")
    if hybrid and local == 1:
        logger.warning("data_parallel_hybrid_lb with data_parallel_size_local 1: this node serves its one replica "
                       "in-process")
    remote = local < size and not hybrid
    address = None
    if remote:
        address = (args.data_parallel_address or DEFAULT_ADDRESS, args.data_parallel_rpc_port or DEFAULT_RPC_PORT)
    return DataParallelLayout(size=local if hybrid else size, local=local, start=start, address=address,
                              headless=headless, hybrid=hybrid)
