"""SGLang's native routes on the server's FastAPI app (add_sglang_routes), answering as an
SGLang worker does, so SGLang clients and routers (sglang-router probes /server_info or
/get_server_info and /model_info or /get_model_info, and polls /get_load) can use cserve:

- POST/PUT /generate (serving_generate.py)
- GET /model_info, /get_model_info: model and tokenizer paths, is_generation, ...
- GET /server_info, /get_server_info: the server arguments under SGLang's names with the
  values cserve runs with, the scheduler's limits, "internal_states" and "version"
- GET/POST /flush_cache: empties the prefix cache when no request runs or waits (?timeout=S
  waits up to S seconds for that), else 400, as SGLang does
- GET /health_generate: 200 once a one-token generation comes back, 503 otherwise
- GET /get_load: [{"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}], one rank

With --api-key every route but /health_generate needs the key, as in SGLang."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from cserve.cli.args import REDACTED
from cserve.entrypoints.auth import key_matches
from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import random_id
from cserve.entrypoints.openai.serving import RequestRun, ServerState, check_list_sizes, release_all, run_all
from cserve.entrypoints.sglang.protocol import GenerateRequest
from cserve.entrypoints.sglang.serving_generate import create_generate
from cserve.sampling_params import SamplingParams

logger = logging.getLogger("cserve.server")

# SGLang's SGLANG_HEALTH_CHECK_TIMEOUT: how long /health_generate waits for its token.
HEALTH_CHECK_TIMEOUT = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT", "20"))
FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting "
           "requests, the operation will not be performed.)\n")


def _arg(args: Any, *names: str, default: Any = None) -> Any:
    """The first of `names` the parsed arguments have (SGLang's name first, then vLLM's), so the
    answer holds whichever dialect the command line was read in."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            return value
    return default


def _model_config(path: str) -> dict:
    try:
        return json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _batched_tokens(state: ServerState) -> tuple[Optional[int], Optional[bool]]:
    """(max_num_batched_tokens, chunked prefill on) as the engine resolved them, when known."""
    try:
        from cserve.cli.args import engine_options
        from cserve.llm import _engine_config

        options = engine_options(state.args)
        options.pop("model", None)
        config = _engine_config(state.model_path, options)
    except Exception:  # noqa: BLE001 - another dialect's namespace: fall back to the flags
        tokens = _arg(state.args, "max_prefill_tokens", "max_num_batched_tokens")
        return tokens, _arg(state.args, "enable_chunked_prefill")
    chunked = bool(config.enable_chunked_prefill)
    tokens = config.max_num_batched_tokens
    if tokens <= 0:
        tokens = 8192 if chunked else max(8192, state.max_model_len)
    return tokens, chunked


def server_args(state: ServerState) -> dict[str, Any]:
    """SGLang's ServerArgs fields with the values this server runs with."""
    args = state.args
    info = state.engine.model_info
    batched, chunked = _batched_tokens(state)
    prefix_caching = _arg(args, "enable_prefix_caching", default=True)
    if _arg(args, "disable_radix_cache") is not None:
        prefix_caching = not args.disable_radix_cache
    reasoning = _arg(args, "reasoning_parser") or None
    out: dict[str, Any] = {}
    given = getattr(args, "backend_args", None)
    if _arg(args, "backend") == "sglang" and isinstance(given, dict):
        # Every flag of the SGLang command line as parsed (secrets redacted); the values the
        # server runs with, below, win.
        out.update(given)
    out.update({
        "model_path": state.model_path,
        "tokenizer_path": _arg(args, "tokenizer_path", "tokenizer", default=state.model_path),
        "tokenizer_mode": _arg(args, "tokenizer_mode", default="auto"),
        "skip_tokenizer_init": state.tokenizer is None,
        "load_format": _arg(args, "load_format", default="auto"),
        "trust_remote_code": bool(_arg(args, "trust_remote_code", default=False)),
        "context_length": state.max_model_len,
        "is_embedding": False,
        "revision": _arg(args, "revision"),
        "host": _arg(args, "host", default="0.0.0.0"),
        "port": _arg(args, "port"),
        "fastapi_root_path": _arg(args, "fastapi_root_path", "root_path", default=""),
        "ssl_keyfile": _arg(args, "ssl_keyfile"),
        "ssl_certfile": _arg(args, "ssl_certfile"),
        "ssl_ca_certs": _arg(args, "ssl_ca_certs"),
        "dtype": info.dtype,
        "quantization": _arg(args, "quantization"),
        "kv_cache_dtype": _arg(args, "kv_cache_dtype", default="auto"),
        "mem_fraction_static": _arg(args, "mem_fraction_static", "gpu_memory_utilization"),
        "max_running_requests": info.max_num_seqs,
        "max_queued_requests": state.max_pending,
        "max_total_tokens": info.kv_cache_tokens,
        "chunked_prefill_size": (batched if chunked else -1) if chunked is not None else None,
        "max_prefill_tokens": batched,
        "schedule_policy": _arg(args, "schedule_policy", default="fcfs"),
        "enable_priority_scheduling": _arg(args, "scheduling_policy") == "priority",
        "page_size": info.block_size,
        "device": "cuda" if info.backend.startswith("cuda") else "cpu",
        "tp_size": _arg(args, "tp_size", "tensor_parallel_size", default=1),
        "pp_size": _arg(args, "pp_size", "pipeline_parallel_size", default=1),
        "dp_size": 1,
        "ep_size": 1,
        "stream_interval": 1,
        "random_seed": _arg(args, "random_seed", "seed"),
        "log_level": _arg(args, "log_level", "uvicorn_log_level", default="info"),
        "log_requests": bool(_arg(args, "log_requests", "enable_log_requests", default=False)),
        "enable_metrics": True,  # /metrics is always served (vLLM's metric names)
        "api_key": REDACTED if _arg(args, "api_key") else None,
        "served_model_name": state.model_name,
        "weight_version": _arg(args, "weight_version", default="default"),
        "chat_template": _arg(args, "chat_template"),
        "enable_cache_report": bool(_arg(args, "enable_cache_report", "enable_prompt_tokens_details", default=False)),
        "reasoning_parser": reasoning,
        "tool_call_parser": _arg(args, "tool_call_parser"),
        "sampling_defaults": "model",
        "load_balance_method": "round_robin",
        "dist_init_addr": None,
        "nnodes": 1,
        "node_rank": 0,
        "preferred_sampling_params": _arg(args, "preferred_sampling_params"),
        "enable_lora": _arg(args, "enable_lora"),
        "disable_radix_cache": not prefix_caching,
        "disable_cuda_graph": info.num_cuda_graphs == 0,
        "allow_auto_truncate": False,
        "disaggregation_mode": "null",
    })
    return out


def model_info(state: ServerState, config: dict) -> dict[str, Any]:
    info = state.engine.model_info
    args = state.args
    return {
        "model_path": state.model_path,
        "tokenizer_path": _arg(args, "tokenizer_path", "tokenizer", default=state.model_path),
        "is_generation": True,
        "preferred_sampling_params": _arg(args, "preferred_sampling_params"),
        "weight_version": _arg(args, "weight_version", default="default"),
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures") or ([info.architecture] if info.architecture else None),
    }


def load(state: ServerState) -> list[dict[str, int]]:
    """SGLang's per-rank load: requests (running and waiting; submitted but not yet scheduled
    ones count as waiting) and the KV tokens in use."""
    s = state.engine.stats()
    info = state.engine.model_info
    waiting = s.num_waiting + max(0, state.engine.num_in_flight - s.num_running - s.num_waiting)
    used = max(0, info.num_kv_blocks - s.num_free_blocks) * info.block_size
    return [{"dp_rank": 0, "num_reqs": s.num_running + waiting, "num_waiting_reqs": waiting,
             "num_tokens": min(used, info.kv_cache_tokens)}]


def _idle(state: ServerState) -> bool:
    s = state.engine.stats()
    return state.engine.num_in_flight == 0 and s.num_running == 0 and s.num_waiting == 0


def flush_prefix_cache(state: ServerState) -> bool:
    """Empties the prefix cache of an idle engine. The engine resets it only while its loop is
    stopped, so the idle loop is stopped and restarted around the reset; nothing else runs on
    the event loop meanwhile, so no request can arrive in between."""
    if not _idle(state) or not state.engine.running:
        return False
    core = state.engine.engine
    core.stop_loop()
    try:
        return bool(core.reset_prefix_cache())
    finally:
        core.start_loop()


async def health_generate(state: ServerState, timeout: float = HEALTH_CHECK_TIMEOUT) -> bool:
    """Whether a one-token greedy generation comes back within `timeout` seconds."""
    if state.draining or not state.engine.running or state.engine.dead_reason is not None:
        return False
    bos = state.engine.model_info.bos_token_id
    try:
        run = RequestRun(state, random_id("health"), [bos if bos >= 0 else 0],
                         SamplingParams(max_tokens=1, temperature=0.0, detokenize=False), 0)
    except Exception as e:  # noqa: BLE001 - the engine refused: unhealthy
        logger.error("Health check failed: the engine refused the request: %s", e)
        return False

    async def one() -> None:
        async for _ in run_all(state, [run]):
            pass

    try:
        await asyncio.wait_for(one(), timeout)
        return run.done
    except Exception as e:  # noqa: BLE001 - timed out or failed: unhealthy
        logger.error("Health check failed: no token within %.0f s (%s)", timeout, type(e).__name__)
        return False
    finally:
        release_all([run])


def _check_sizes(state: ServerState, data: dict) -> None:
    """The OpenAI endpoints' raw-body size checks, on /generate's field names."""
    check_list_sizes(state, {"prompt": data.get("input_ids")})
    sps = data.get("sampling_params")
    for sp in sps if isinstance(sps, list) else [sps]:
        if isinstance(sp, dict):
            check_list_sizes(state, {k: sp.get(k) for k in ("stop_token_ids", "logit_bias")})


def add_sglang_routes(app: FastAPI, state: ServerState) -> None:
    """Registers SGLang's native routes on the server's app (called by build_app)."""
    from cserve.entrypoints.openai.api_server import _log_request, _parse, api_keys, respond

    tokens = [f"Bearer {k}".encode() for k in api_keys(state.args)]
    config = _model_config(state.model_path)
    throughput = {"time": time.monotonic(), "tokens": 0, "value": 0.0}

    def authorize(request: Request) -> None:
        if tokens and not key_matches(request.headers.get("authorization", "").encode(), tokens):
            raise APIError("Unauthorized", 401)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request):
        authorize(request)
        parsed = await _parse(request, GenerateRequest, state, _check_sizes)  # size checks in /generate's names
        rid = random_id("generate")
        prompt = parsed.text if parsed.text is not None else parsed.input_ids
        _log_request(state, rid, prompt, parsed.model_dump(exclude={"text", "input_ids"}, exclude_none=True))
        return await respond(state, request, create_generate, parsed, rid)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def get_model_info(request: Request):
        authorize(request)
        return JSONResponse(model_info(state, config))

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def get_server_info(request: Request):
        from cserve import __version__

        authorize(request)
        info = state.engine.model_info
        s = state.engine.stats()
        now = time.monotonic()
        if now - throughput["time"] >= 1.0:  # generation tokens/s since the previous answer
            throughput["value"] = (s.generation_tokens - throughput["tokens"]) / (now - throughput["time"])
            throughput["time"], throughput["tokens"] = now, s.generation_tokens
        arguments = server_args(state)
        internal = {**arguments, "last_gen_throughput": throughput["value"],
                    "memory_usage": {"weight": round(info.weight_bytes / 2**30, 2),
                                     "kvcache": round(info.kv_cache_bytes / 2**30, 2),
                                     "token_capacity": info.kv_cache_tokens, "graph": 0},
                    "effective_max_running_requests_per_dp": info.max_num_seqs}
        return JSONResponse({**arguments, "status": "ready", "max_total_num_tokens": info.kv_cache_tokens,
                             "max_req_input_len": state.max_model_len - 1, "internal_states": [internal],
                             "version": __version__})

    @app.get("/get_load")
    async def get_load(request: Request):
        authorize(request)
        return JSONResponse(load(state))

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache(request: Request, timeout: float = 0.0):
        authorize(request)
        wait = min(max(timeout, 0.0), 600.0) if math.isfinite(timeout) else 0.0
        deadline = time.monotonic() + wait
        while not flush_prefix_cache(state):
            if time.monotonic() >= deadline:
                s = state.engine.stats()
                raise APIError(f"Cache not flushed: the server is not idle ({s.num_running} running, "
                               f"{s.num_waiting} waiting, {state.engine.num_in_flight} in flight); the prefix "
                               "cache is flushed only when no request runs or waits (pass ?timeout=S to wait "
                               "up to S seconds).", 400)
            await asyncio.sleep(0.05)
        logger.info("Flushed the prefix cache")
        return PlainTextResponse(FLUSHED)

    @app.get("/health_generate")
    async def health_gen():
        ok = await health_generate(state)
        return Response(status_code=200 if ok else 503)
