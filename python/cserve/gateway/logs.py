"""Log streaming to the gateway: a logging.Handler that puts records into a bounded buffer and never
blocks, whichever thread logs; the worker's sender task takes them out in batches.

The buffer keeps the newest records: when it is full the oldest is dropped and counted, and the count
travels with the next batch (`dropped`), so the gateway knows what it missed. Only Python log records
are streamed; the C++ runtime writes its own lines to stderr, which are not Python records."""

from __future__ import annotations

import logging
import threading
from collections import deque

# The loggers whose records are streamed: cserve's own (every cserve.* module propagates to it),
# uvicorn's server messages, and its access log (which uvicorn does not propagate).
STREAMED_LOGGERS = ("cserve", "uvicorn", "uvicorn.access")


def record_to_json(record: logging.LogRecord) -> dict:
    """One log record as the gateway protocol sends it (docs/gateway.md)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string or arguments: send what there is
        message = f"{record.msg!r} % {record.args!r}"
    out = {"time": record.created, "level": record.levelname, "logger": record.name, "message": message}
    if record.exc_info and record.exc_info[0] is not None:
        out["exception"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exception"] = record.exc_text
    return out


class LogBuffer:
    """A bounded FIFO of log records (already JSON-ready dicts) that drops the oldest when full and
    counts the drops. Every method holds a plain lock for a few list operations only."""

    def __init__(self, capacity: int = 10000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._records: deque = deque()
        self._dropped = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: dict) -> None:
        with self._lock:
            if len(self._records) >= self.capacity:
                self._records.popleft()
                self._dropped += 1
            self._records.append(record)

    def take(self, limit: int) -> tuple[list, int]:
        """Up to `limit` of the oldest records and the number dropped since the last take; both are
        removed from the buffer (give them back with `restore` if they could not be sent)."""
        with self._lock:
            count = min(limit, len(self._records))
            batch = [self._records.popleft() for _ in range(count)]
            dropped, self._dropped = self._dropped, 0
        return batch, dropped

    def restore(self, batch: list, dropped: int) -> None:
        """Puts back a batch that could not be sent, ahead of the newer records, as far as there is
        room; what does not fit (the oldest) is counted as dropped."""
        with self._lock:
            room = self.capacity - len(self._records)
            keep = batch[len(batch) - room:] if 0 < room < len(batch) else (batch if room > 0 else [])
            self._records.extendleft(reversed(keep))
            self._dropped += dropped + len(batch) - len(keep)

    @property
    def dropped(self) -> int:
        return self._dropped


class LogStreamHandler(logging.Handler):
    """Copies every record it sees into a LogBuffer. emit() formats the message and appends: it does
    no I/O and waits on nothing but the buffer's lock."""

    def __init__(self, buffer: LogBuffer, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.buffer = buffer
        self._attached: list[logging.Logger] = []

    def emit(self, record: logging.LogRecord) -> None:
        # A logging config may let uvicorn.access propagate to uvicorn: one copy per record.
        if getattr(record, "_cserve_gateway_buffered", False):
            return
        record._cserve_gateway_buffered = True
        try:
            self.buffer.put(record_to_json(record))
        except Exception:
            self.handleError(record)

    def attach(self, names: tuple = STREAMED_LOGGERS) -> None:
        for name in names:
            log = logging.getLogger(name)
            if self not in log.handlers:
                log.addHandler(self)
                self._attached.append(log)

    def detach(self) -> None:
        for log in self._attached:
            log.removeHandler(self)
        self._attached.clear()

