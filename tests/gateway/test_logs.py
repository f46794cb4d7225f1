"""The log buffer and handler: bounded, oldest dropped and counted, safe from many threads at once."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from cserve.gateway.logs import LogBuffer, LogStreamHandler, record_to_json


def test_buffer_drops_the_oldest_and_counts_them():
    buf = LogBuffer(capacity=3)
    for i in range(5):
        buf.put({"n": i})
    batch, dropped = buf.take(10)
    assert [r["n"] for r in batch] == [2, 3, 4]
    assert dropped == 2
    assert buf.take(10) == ([], 0)


def test_restore_puts_a_batch_back_ahead_of_newer_records_as_far_as_it_fits():
    buf = LogBuffer(capacity=4)
    for i in range(3):
        buf.put({"n": i})
    batch, dropped = buf.take(3)
    buf.put({"n": 3})
    buf.put({"n": 4})
    buf.restore(batch, dropped)  # room for two: the two newest of the batch come back
    again, dropped = buf.take(10)
    assert [r["n"] for r in again] == [1, 2, 3, 4]
    assert dropped == 1


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        LogBuffer(0)


def test_handler_streams_cserve_and_uvicorn_records_with_exceptions():
    buf = LogBuffer(100)
    handler = LogStreamHandler(buf)
    handler.attach()
    try:
        logging.getLogger("cserve.gateway.test").warning("hello %s", "world")
        logging.getLogger("uvicorn.error").info("uvicorn says hi")
        logging.getLogger("somewhere.else").warning("not streamed")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("cserve").exception("failed")
    finally:
        handler.detach()
    logging.getLogger("cserve").warning("after detach")
    records, dropped = buf.take(100)
    messages = [r["message"] for r in records]
    assert "hello world" in messages and "failed" in messages and "after detach" not in messages
    assert "not streamed" not in messages
    hello = records[messages.index("hello world")]
    assert hello["level"] == "WARNING" and hello["logger"] == "cserve.gateway.test" and hello["time"] > 0
    assert "RuntimeError: boom" in records[messages.index("failed")]["exception"]
    assert dropped == 0


def test_a_record_with_bad_arguments_is_still_sent():
    record = logging.LogRecord("cserve", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert "many" in record_to_json(record)["message"]


def test_many_threads_logging_at_once_never_block_and_every_record_is_kept_or_counted():
    buf = LogBuffer(capacity=1000)
    handler = LogStreamHandler(buf)
    log = logging.getLogger("cserve.gateway.stress")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    threads, per_thread = 8, 2000
    taken = []
    done = threading.Event()

    def drain():
        while not done.is_set():
            taken.append(buf.take(100))
            time.sleep(0.001)

    def work():
        for i in range(per_thread):
            log.info("record %d", i)

    try:
        reader = threading.Thread(target=drain)
        reader.start()
        t0 = time.monotonic()
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(30)
        elapsed = time.monotonic() - t0
        done.set()
        reader.join(10)
    finally:
        log.removeHandler(handler)
        log.propagate = True
    taken.append(buf.take(10**6))
    kept = sum(len(batch) for batch, _ in taken)
    dropped = sum(d for _, d in taken)
    assert kept + dropped == threads * per_thread
    assert len(buf) == 0
    assert elapsed < 30
