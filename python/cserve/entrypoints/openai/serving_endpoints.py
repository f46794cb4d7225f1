"""vLLM's non-generation routes, and /invocations: models, health, ping, version, load, tokenize,
detokenize, tokenizer_info, metrics, and the development routes (VLLM_SERVER_DEV_MODE=1:
/server_info, /reset_prefix_cache, /reset_mm_cache, /reset_encoder_cache), with vLLM 0.15's
request and response shapes. docs/serve.md's "Endpoints" table says what each of vLLM's routes
does here; tests/entrypoints/openai/test_vllm_endpoints.py keeps the two in step."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError

from cserve.entrypoints.openai.errors import APIError
from cserve.entrypoints.openai.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                                TokenizeRequest)
from cserve.entrypoints.openai.serving import ServerState, check_list_sizes

logger = logging.getLogger("cserve.server")

# Request fields of vLLM's tokenize request that only multimodal models use.
_MULTIMODAL_FIELDS = ("media_io_kwargs", "mm_processor_kwargs")


def _model_permission() -> dict[str, Any]:
    """vLLM's ModelPermission as it fills it for every served model."""
    return {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": int(time.time()),
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
            "group": None, "is_blocking": False}


def model_card(state: ServerState, name: str) -> dict[str, Any]:
    """vLLM's ModelCard: root is the model path or id it was started with; no parent (LoRA
    adapters have one, and cserve serves none)."""
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
            "root": state.model_path, "parent": None, "max_model_len": state.max_model_len,
            "permission": [_model_permission()]}


def dev_mode() -> bool:
    """VLLM_SERVER_DEV_MODE=1 (vLLM reads it as an int): the development routes are served."""
    try:
        return bool(int(os.environ.get("VLLM_SERVER_DEV_MODE", "0")))
    except ValueError:
        return False


def _config_dict(state: ServerState) -> dict[str, Any]:
    args = vars(state.args)
    secret = ("api_key", "hf_token", "ssl_keyfile")
    return {k: ("<redacted>" if k in secret and v else v) for k, v in sorted(args.items())
            if not k.startswith("_") and not callable(v)}


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def _env_vars() -> dict[str, str]:
    """vLLM's "vllm_env": the VLLM_* variables set, leaving out any whose name holds KEY."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("VLLM_") and "KEY" not in k}


def _system_env(state: ServerState) -> dict[str, Any]:
    """What cserve knows of vLLM's collect_env fields (no torch, CUDA or GPU probing here)."""
    from cserve import __version__

    info = state.engine.model_info
    return {"os": platform.platform(), "python_version": sys.version.split()[0],
            "python_platform": platform.platform(), "cpu_info": platform.processor() or platform.machine(),
            "cserve_version": __version__, "vllm_version": __version__,
            "num_threads": os.environ.get("CSERVE_NUM_THREADS"), "device": getattr(info, "device", None)}


async def _tokenize(state: ServerState, parsed: TokenizeRequest) -> dict[str, Any]:
    from cserve.entrypoints.openai.serving_chat import render_request

    state.check_model(parsed.model)
    for field in _MULTIMODAL_FIELDS:
        if getattr(parsed, field) is not None:
            raise APIError(f"{field} is not supported: cserve serves text-only models.", 400, field)
    if (parsed.prompt is None) == (parsed.messages is None):
        raise APIError("Give exactly one of prompt and messages.", 400)
    if parsed.messages is not None:
        try:
            chat = ChatCompletionRequest(messages=parsed.messages, add_generation_prompt=parsed.add_generation_prompt,
                                         continue_final_message=parsed.continue_final_message,
                                         chat_template=parsed.chat_template,
                                         chat_template_kwargs=parsed.chat_template_kwargs, tools=parsed.tools,
                                         add_special_tokens=bool(parsed.add_special_tokens))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise APIError(f"{where}: {first.get('msg')}", 400, where or None) from None
        _, ids = await render_request(state, chat, check_length=False)
    else:
        add = True if parsed.add_special_tokens is None else parsed.add_special_tokens
        ids = await state.tokenize(parsed.prompt, add, check_length=False)
    strs = None
    if parsed.return_token_strs:
        tok = state.tokenizer
        strs = await state.off_loop(len(ids), lambda: [tok.id_to_token(t) for t in ids])
    return {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids, "token_strs": strs}


def add_endpoint_routes(app: FastAPI, state: ServerState) -> None:
    """Every route but the generation ones (/v1/completions, /v1/chat/completions)."""
    from cserve import __version__
    from cserve.entrypoints.openai.api_server import _error, _parse

    args = state.args

    @app.get("/v1/models")
    async def models():
        return JSONResponse({"object": "list", "data": [model_card(state, n) for n in state.served_names]})

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        state.check_model(name)
        return JSONResponse(model_card(state, name))

    @app.get("/health")
    async def health():
        if state.engine.dead_reason is not None:
            return _error(f"The engine is dead: {state.engine.dead_reason}", 503)
        if not state.engine.running:
            return _error("The engine is not running.", 503)
        return Response(status_code=200)

    @app.api_route("/ping", methods=["GET", "POST"])
    async def ping():
        return await health()

    @app.get("/version")
    async def version():
        return JSONResponse({"version": __version__})

    @app.get("/load")
    async def load():
        # As vLLM: always served; 0 unless --enable-server-load-tracking.
        tracked = args.enable_server_load_tracking
        return JSONResponse({"server_load": state.engine.num_in_flight if tracked else 0})

    @app.post("/tokenize")
    async def tokenize(request: Request):
        return JSONResponse(await _tokenize(state, await _parse(request, TokenizeRequest, state)))

    @app.post("/detokenize")
    async def detokenize(request: Request):
        parsed = await _parse(request, DetokenizeRequest, state)
        state.check_model(parsed.model)
        tok = state.require_tokenizer()
        vocab = state.engine.model_info.vocab_size
        bad = [t for t in parsed.tokens if t < 0 or t >= vocab]
        if bad:
            raise APIError(f"Token ids {bad[:8]} are out of vocabulary (vocab_size {vocab}).", 400, "tokens")
        # The batch call releases the GIL; on the worker thread for long inputs.
        text = await state.off_loop(len(parsed.tokens),
                                    lambda: tok.decode_batch([parsed.tokens], skip_special_tokens=False)[0])
        return JSONResponse({"prompt": text})

    if args.enable_tokenizer_info_endpoint:
        @app.get("/tokenizer_info")
        async def tokenizer_info():
            info = {k: v for k, v in state.tokenizer_config.items() if k != "added_tokens_decoder"}
            info.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
            info["model_max_length"] = state.max_model_len
            if state.chat_template is not None:
                info["chat_template"] = state.chat_template.source
            return JSONResponse(info)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    if dev_mode():
        _add_dev_routes(app, state)


def _add_dev_routes(app: FastAPI, state: ServerState) -> None:
    """vLLM's development routes (VLLM_SERVER_DEV_MODE=1). Registered before SGLang's routes,
    so /server_info answers in vLLM's shape in dev mode."""
    from cserve.entrypoints.sglang.routes import flush_prefix_cache

    logger.warning("SECURITY WARNING: Development endpoints are enabled! This should NOT be used in production!")

    @app.get("/server_info")
    async def server_info(config_format: Literal["text", "json"] = "text"):
        config = _config_dict(state)
        return JSONResponse({"vllm_config": _config_text(config) if config_format == "text" else config,
                             "vllm_env": _env_vars(), "system_env": _system_env(state)})

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache(reset_running_requests: bool = False, reset_external: bool = False):
        if reset_running_requests:
            raise APIError("reset_running_requests is not supported: cserve resets the prefix cache only while "
                           "no request runs or waits.", 400, "reset_running_requests")
        # reset_external: there is no external (KV connector) cache to reset.
        logger.info("Resetting prefix cache...")
        if not flush_prefix_cache(state):
            # As vLLM: the reset fails while requests hold blocks; the answer is 200 all the same.
            logger.warning("Failed to reset the prefix cache: requests are running or waiting.")
        return Response(status_code=200)

    @app.post("/reset_mm_cache")
    async def reset_mm_cache():
        return Response(status_code=200)  # no multimodal cache: nothing to reset, as vLLM on a text model

    @app.post("/reset_encoder_cache")
    async def reset_encoder_cache():
        return Response(status_code=200)


def add_invocations_route(app: FastAPI, state: ServerState, generate) -> None:
    """/invocations (SageMaker): the body goes to the first endpoint whose request it validates
    as, chat completions before completions (vLLM's order); none: 400, as vLLM.
    generate(request, body_type, prefix, prompt_field, create, parsed) runs the endpoint."""
    from cserve.entrypoints.openai.api_server import parse_json_body
    from cserve.entrypoints.openai.serving_chat import create_chat_completion
    from cserve.entrypoints.openai.serving_completion import create_completion

    kinds = ((ChatCompletionRequest, "chatcmpl", "messages", create_chat_completion),
             (CompletionRequest, "cmpl", "prompt", create_completion))

    @app.post("/invocations")
    async def invocations(request: Request):
        data = parse_json_body(await request.body())
        check_list_sizes(state, data)
        for body_type, prefix, field, create in kinds:
            try:
                parsed = body_type.model_validate(data)
            except ValidationError:
                continue
            if parsed.model_extra:
                logger.warning("The following fields were present in the request but ignored: %s",
                               set(parsed.model_extra))
            return await generate(request, body_type, prefix, field, create, parsed)
        names = [k[0].__name__ for k in kinds]
        raise APIError(f"Cannot find suitable handler for request. Expected one of: {names}", 400)


__all__ = ["TokenizeRequest", "DetokenizeRequest", "add_endpoint_routes", "add_invocations_route", "model_card",
           "dev_mode"]
