"""The OpenAI-compatible HTTP server behind `cserve serve`."""
