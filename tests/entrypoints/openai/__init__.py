"""Tests of the OpenAI-compatible HTTP server, through a real `cserve serve` process."""
