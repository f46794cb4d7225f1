"""The grammar compiler in a process of its own, so that a grammar which takes too long to
compile (xgrammar has no way to cancel one) is stopped by killing the process, never by waiting
on a thread that cannot be stopped.

Protocol on the child's stdin/stdout: frames of an 8-byte little-endian length and UTF-8 JSON.
The first frame is the vocabulary; each later one is a request {"method", "source",
"any_whitespace"} answered by {"grammar": serialized text} or {"error": message}."""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Optional

_HEADER = struct.Struct("<Q")


def write_frame(stream: BinaryIO, obj: Any) -> None:
    data = json.dumps(obj).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    return json.loads(stream.read(size))


class CompileTimeout(Exception):
    pass


class CompileWorker:
    """The parent's side: one child, one compile at a time (callers queue on the lock)."""

    def __init__(self, vocab: dict[str, Any]) -> None:
        self._vocab = json.dumps(vocab).encode()
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "cserve.structured.compile_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        proc.stdin.write(_HEADER.pack(len(self._vocab)) + self._vocab)
        proc.stdin.flush()
        return proc

    def compile(self, method: str, source: Any, any_whitespace: bool, timeout: float) -> dict[str, Any]:
        """{"grammar": text} or {"error": message}; CompileTimeout after `timeout` seconds (the
        child is then killed and the next call starts a fresh one)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            try:
                write_frame(proc.stdin, {"method": method, "source": source, "any_whitespace": any_whitespace})
                return self._read(proc, time.monotonic() + timeout)
            except (CompileTimeout, EOFError, OSError, ValueError) as e:
                self._kill()
                if isinstance(e, CompileTimeout):
                    raise
                return {"error": "the grammar compiler process failed"}

    def _read(self, proc: subprocess.Popen, deadline: float) -> dict[str, Any]:
        fd = proc.stdout.fileno()
        buf = bytearray()
        need = _HEADER.size
        while True:
            while len(buf) < need:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise CompileTimeout
                chunk = os.read(fd, max(need - len(buf), 1 << 16))
                if not chunk:
                    raise EOFError
                buf += chunk
            if need == _HEADER.size:
                need += _HEADER.unpack(bytes(buf[:_HEADER.size]))[0]
                continue
            return json.loads(bytes(buf[_HEADER.size:need]))

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            self._kill()


def main() -> None:
    from cserve import _core

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    try:
        v = read_frame(stdin)
    except EOFError:
        return
    compiler = _core.GrammarCompiler(v["encoded_vocab"], v["tokenizer_json"], v["vocab_size"], v["stop_token_ids"])
    while True:
        try:
            req = read_frame(stdin)
        except EOFError:
            return
        method, source = req["method"], req["source"]
        try:
            if method == "json_schema":
                grammar = compiler.json_schema(source, req["any_whitespace"])
            else:
                grammar = getattr(compiler, method)(source)
            write_frame(stdout, {"grammar": compiler.serialize(grammar)})
        except ValueError as e:
            write_frame(stdout, {"error": str(e).strip()})


if __name__ == "__main__":
    main()
