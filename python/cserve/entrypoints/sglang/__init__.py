"""SGLang's native HTTP API beside the OpenAI one: /generate, /model_info, /server_info,
/flush_cache, /health_generate and /get_load, in SGLang's JSON shapes (routes.py)."""

from cserve.entrypoints.sglang.routes import add_sglang_routes

__all__ = ["add_sglang_routes"]
