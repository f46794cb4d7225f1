"""A step that throws (injected through the CSERVE_TEST_FAIL_STEPS test hook) ends the requests
it touched with an error their callers see; the others go on; aborts made during the failed step
and adds still queued are not lost; after repeated failures the engine is dead. Internal request
ids never collide with client ids."""

from __future__ import annotations

import pytest

from cserve import _core

POISON = 77


def _params(max_tokens: int, n: int = 1) -> _core.SamplingParams:
    p = _core.SamplingParams()
    p.temperature = 0
    p.max_tokens = max_tokens
    p.ignore_eos = True
    p.n = n
    return p


def _engine(path: str, monkeypatch, spec: str = f"token:{POISON}", **options) -> _core.Engine:
    """An engine whose steps fail as `spec` says ("" for none)."""
    monkeypatch.setenv("CSERVE_TEST_FAIL_STEPS", spec)
    config = _core.EngineConfig()
    config.model = path
    config.dtype = "float32"
    config.num_gpu_blocks_override = 64
    config.max_model_len = 128
    config.num_threads = 1
    for name, value in options.items():
        setattr(config, name, value)
    return _core.Engine(config)


def _drain(engine, outs_by_id, limit=200):
    for _ in range(limit):
        if not engine.has_unfinished_requests():
            return
        for o in engine.step():
            outs_by_id.setdefault(o.request_id, []).append(o)
    raise AssertionError("the engine did not finish its requests")


def _assert_idle(engine):
    s = engine.stats()
    assert not engine.has_unfinished_requests()
    assert s.num_running == 0 and s.num_waiting == 0 and s.kv_cache_usage == 0


@pytest.fixture(scope="module")
def model(model_zoo):
    return model_zoo.get("llama")


def test_a_failed_step_fails_only_the_requests_it_touched(model, monkeypatch):
    engine = _engine(model.path, monkeypatch)
    outs: dict = {}
    engine.add_request("ok", [5, 6, 7], _params(6))
    for o in engine.step():
        outs.setdefault(o.request_id, []).append(o)
    engine.add_request("bad", [5, POISON, 7], _params(6, n=2))
    _drain(engine, outs)
    bad = outs["bad"]
    assert sorted(o.index for o in bad) == [0, 1]
    assert all(o.finish_reason == "error" and "injected step failure" in o.error for o in bad)
    # The healthy request was in the failed step too: it fails with it (its KV may be half written).
    assert outs["ok"][-1].finish_reason == "error"
    assert not engine.is_dead()
    # Later requests run normally.
    engine.add_request("after", [5, 6, 7], _params(4))
    _drain(engine, outs)
    assert outs["after"][-1].finish_reason == "length"
    assert sum(len(o.new_token_ids) for o in outs["after"]) == 4
    _assert_idle(engine)


def test_requests_outside_the_failed_step_go_on(model, monkeypatch):
    engine = _engine(model.path, monkeypatch)
    outs: dict = {}
    engine.add_request("bad", [5, POISON, 7], _params(3))
    for o in engine.step():  # fails: only "bad" was scheduled
        outs.setdefault(o.request_id, []).append(o)
    assert [o.finish_reason for o in outs["bad"]] == ["error"]
    engine.add_request("ok", [5, 6, 7], _params(5))
    _drain(engine, outs)
    assert outs["ok"][-1].finish_reason == "length"
    _assert_idle(engine)


def test_aborts_and_queued_adds_survive_a_failed_step(model, monkeypatch):
    engine = _engine(model.path, monkeypatch)
    engine.add_request("running", [5, 6, 7], _params(20))
    engine.step()
    # In one step: a poisoned add, an abort of a running request, and an add that is aborted
    # before it ever reached the scheduler.
    engine.add_request("bad", [POISON, 6], _params(3))
    engine.abort("running")
    engine.add_request("queued", [5, 6], _params(3))
    engine.abort("queued")
    outs = engine.step()
    reasons = {(o.request_id, o.finish_reason) for o in outs}
    assert ("running", "abort") in reasons and ("queued", "abort") in reasons and ("bad", "error") in reasons
    _assert_idle(engine)
    # The ids are free again.
    engine.add_request("running", [5, 6, 7], _params(2))
    done: dict = {}
    _drain(engine, done)
    assert done["running"][-1].finish_reason == "length"


def test_repeated_failures_kill_the_engine(model, monkeypatch):
    engine = _engine(model.path, monkeypatch, "from_step:2")
    outs: dict = {}
    engine.add_request("a", [5, 6, 7], _params(30))
    engine.step()
    engine.step()
    for i in range(3):  # each fails its requests; the third in a row kills the engine
        engine.add_request(f"b{i}", [5, 6, 7], _params(30))
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
    assert engine.is_dead()
    assert "3 engine steps failed in a row" in engine.dead_reason()
    assert outs["a"][-1].finish_reason == "error" and all(outs[f"b{i}"][-1].finish_reason == "error" for i in range(3))
    with pytest.raises(_core.EngineDeadError, match="the engine is dead"):
        engine.add_request("c", [5, 6, 7], _params(3))
    assert issubclass(_core.EngineDeadError, RuntimeError)
    _assert_idle(engine)


def test_client_ids_never_collide_with_internal_ids(model, monkeypatch):
    engine = _engine(model.path, monkeypatch, "")
    # "c#1" once named the second completion of "c": two separate requests now, each with its own blocks.
    outs: dict = {}
    engine.add_request("c#1", [5, 6, 7, 8], _params(7))
    for o in engine.step():
        outs.setdefault(o.request_id, []).append(o)
    engine.add_request("c", [9, 10, 11], _params(5, n=2))
    _drain(engine, outs)
    assert [o.index for o in outs["c#1"]] == [0] * len(outs["c#1"])
    assert sum(len(o.new_token_ids) for o in outs["c#1"]) == 7
    for i in (0, 1):
        assert sum(len(o.new_token_ids) for o in outs["c"] if o.index == i) == 5
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("c", [1], _params(1))
        engine.add_request("c", [1], _params(1))
    _drain(engine, outs)
    _assert_idle(engine)


def test_n_above_max_num_seqs_is_refused(model, monkeypatch):
    engine = _engine(model.path, monkeypatch, "", max_num_seqs=4)
    assert engine.model_info().max_num_seqs == 4
    with pytest.raises(ValueError, match="n must be at most max_num_seqs"):
        engine.add_request("x", [5, 6], _params(2, n=5))
    assert not engine.has_unfinished_requests()
