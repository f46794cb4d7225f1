"""Servers that front the engine: the OpenAI-compatible HTTP server (and later gRPC)."""
