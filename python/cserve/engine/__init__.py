"""The asyncio side of the engine: a loop-thread engine whose outputs the event loop drains."""

from cserve.engine.async_engine import AsyncEngine, EngineDeadError, EngineRequestError, RequestStream
from cserve.engine.detokenizer import IncrementalDetokenizer

__all__ = ["AsyncEngine", "EngineDeadError", "EngineRequestError", "RequestStream", "IncrementalDetokenizer"]
