"""API keys (--api-key / VLLM_API_KEY), shared by the HTTP and gRPC servers."""

from __future__ import annotations

import hmac
from typing import Optional


def key_matches(given: Optional[bytes], tokens: list[bytes]) -> bool:
    """Whether the Authorization value is one of the accepted "Bearer <key>" values, compared in
    constant time so response timing does not reveal how much of a key was right."""
    given = given or b""
    return any(hmac.compare_digest(given, t) for t in tokens)
