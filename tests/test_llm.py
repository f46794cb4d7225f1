"""The offline LLM API and the engine around it: model info, stats and prefix-cache counters,
dummy weights, priorities, aborts and the background loop."""

from __future__ import annotations

import select

import numpy as np
import pytest

from cserve import LLM, SamplingParams, _core
from tests.helpers.models import check_request, greedy, make_llm, random_prompt


@pytest.fixture(scope="module")
def built(model_zoo):
    return model_zoo.get("llama")


def test_model_info(built):
    llm = make_llm(built.path, num_gpu_blocks_override=37, block_size=8, max_model_len=128)
    info = llm.model_info
    assert info.architecture == "LlamaForCausalLM"
    assert info.vocab_size == 256 and info.max_model_len == 128
    assert 2 in info.eos_token_ids and info.bos_token_id == 1
    assert info.dtype == "float32"
    assert info.num_kv_blocks == 37 and info.block_size == 8 and info.kv_cache_tokens == 37 * 8
    assert info.weight_bytes > 0 and info.kv_cache_bytes > 0
    assert llm.get_tokenizer() is None
    stats = llm.engine.stats()
    assert stats.num_free_blocks == 37 and stats.num_running == 0 and stats.kv_cache_usage == 0


def test_max_model_len_defaults_to_the_config(built):
    llm = LLM(model=built.path, dtype="float32", num_threads=1, num_gpu_blocks_override=64)
    assert llm.model_info.max_model_len == built.config["max_position_embeddings"]


def test_prefix_cache_counters(built):
    llm = make_llm(built.path, block_size=16)
    prompt = random_prompt(np.random.default_rng(1), 40, built.vocab_size)
    sp = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    (a,) = llm.generate({"prompt_token_ids": prompt}, sp)
    s = llm.engine.stats()
    assert (s.prefix_cache_queries, s.prefix_cache_hits, s.prompt_tokens) == (40, 0, 40)
    assert s.generation_tokens == 3
    (b,) = llm.generate({"prompt_token_ids": prompt}, sp)
    s = llm.engine.stats()
    assert (s.prefix_cache_queries, s.prefix_cache_hits, s.prompt_tokens) == (80, 32, 48)
    assert a.num_cached_tokens == 0 and b.num_cached_tokens == 32
    assert a.outputs[0].token_ids == b.outputs[0].token_ids
    assert llm.reset_prefix_cache() is True
    (c,) = llm.generate({"prompt_token_ids": prompt}, sp)
    s = llm.engine.stats()
    assert c.num_cached_tokens == 0 and s.prefix_cache_hits == 32 and s.prefix_cache_queries == 120
    assert c.outputs[0].token_ids == a.outputs[0].token_ids


def test_prefix_caching_off(built):
    llm = make_llm(built.path, enable_prefix_caching=False)
    prompt = random_prompt(np.random.default_rng(2), 40, built.vocab_size)
    sp = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    for _ in range(2):
        (out,) = llm.generate({"prompt_token_ids": prompt}, sp)
        assert out.num_cached_tokens == 0
    assert llm.engine.stats().prefix_cache_hits == 0


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_hash_algos_through_the_llm(built, algo):
    llm = make_llm(built.path, prefix_caching_hash_algo=algo, block_size=8)
    prompt = random_prompt(np.random.default_rng(3), 20, built.vocab_size)
    outs = [llm.generate({"prompt_token_ids": prompt}, greedy(4, prompt_logprobs=None))[0] for _ in range(2)]
    assert outs[1].num_cached_tokens == 16
    for out in outs:
        check_request(built, out, prompt_logprobs=False)


def test_dummy_weights(built):
    llm = make_llm(built.path, load_format="dummy")
    prompts = [{"prompt_token_ids": [3, 4, 5]}, {"prompt_token_ids": list(range(10, 50))}]
    sp = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    outs = llm.generate(prompts, sp)
    for out in outs:
        c = out.outputs[0]
        assert len(c.token_ids) == 6 and c.finish_reason == "length"
        assert all(0 <= t < 256 for t in c.token_ids)
        assert all(np.isfinite(lp.logprob) for d in c.logprobs for lp in d.values())
        assert all(np.isfinite(lp.logprob) for d in out.prompt_logprobs[1:] for lp in d.values())
    # Deterministic for a seed.
    again = make_llm(built.path, load_format="dummy").generate(prompts, sp)
    assert [o.outputs[0].token_ids for o in again] == [o.outputs[0].token_ids for o in outs]


def test_thread_count_does_not_change_results(built):
    prompt = random_prompt(np.random.default_rng(4), 30, built.vocab_size)
    sp = greedy(10)
    (one,) = make_llm(built.path, num_threads=1).generate({"prompt_token_ids": prompt}, sp)
    (two,) = make_llm(built.path, num_threads=2).generate({"prompt_token_ids": prompt}, sp)
    assert one.outputs[0].token_ids == two.outputs[0].token_ids
    a = [d[t].logprob for d, t in zip(one.outputs[0].logprobs, one.outputs[0].token_ids)]
    b = [d[t].logprob for d, t in zip(two.outputs[0].logprobs, two.outputs[0].token_ids)]
    assert np.allclose(a, b, atol=1e-5)


def test_priority_scheduling_through_generate(built):
    llm = make_llm(built.path, scheduling_policy="priority", max_num_seqs=2, num_gpu_blocks_override=10,
                   block_size=8)
    rng = np.random.default_rng(5)
    prompts = [random_prompt(rng, 15, built.vocab_size) for _ in range(5)]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(12), priority=[3, 0, 2, 1, 0])
    for p, out in zip(prompts, outs):
        assert out.prompt_token_ids == p
        check_request(built, out)
    assert llm.engine.stats().num_free_blocks == 10


def test_engine_step_abort_and_duplicate_ids(built):
    llm = make_llm(built.path, num_gpu_blocks_override=20, block_size=4)
    eng = llm.engine
    p = _core.SamplingParams()
    p.max_tokens = 50
    p.ignore_eos = True
    eng.add_request("a", [5, 6, 7, 8, 9], p)
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request("a", [5, 6], p)
    eng.add_request("b", [5, 6, 7], p)
    outs = eng.step()
    assert sorted(o.request_id for o in outs) == ["a", "b"]
    assert all(len(o.new_token_ids) == 1 and not o.finished for o in outs)
    assert eng.stats().num_running == 2 and eng.stats().num_free_blocks < 20
    eng.abort("a")
    eng.abort("nonexistent")  # unknown ids are ignored
    outs = eng.step()
    aborted = [o for o in outs if o.request_id == "a"]
    assert len(aborted) == 1 and aborted[0].finish_reason == "abort"
    assert [o.request_id for o in outs if o.request_id == "b"] == ["b"]
    eng.abort("b")
    eng.step()
    assert not eng.has_unfinished_requests()
    assert eng.stats().num_free_blocks == 20
    # The id can be reused once finished.
    eng.add_request("a", [5, 6], p)
    eng.abort("a")
    eng.step()
    assert not eng.has_unfinished_requests()


def test_background_loop(built):
    llm = make_llm(built.path)
    prompt = random_prompt(np.random.default_rng(6), 12, built.vocab_size)
    (want,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    eng = llm.engine
    p = _core.SamplingParams()
    p.temperature = 0.0
    p.max_tokens = 8
    p.ignore_eos = True
    long = _core.SamplingParams()
    long.max_tokens = 1000
    long.ignore_eos = True
    eng.start_loop()
    try:
        with pytest.raises(RuntimeError, match="loop"):
            eng.step()
        eng.add_request("x", prompt, p)
        eng.add_request("y", prompt, long)
        got, finished = [], {}
        for _ in range(1000):
            if "x" in finished and "y_started" in finished:
                break
            ready, _, _ = select.select([eng.output_fd()], [], [], 30)
            assert ready, "no output within 30 s"
            for o in eng.drain_outputs():
                if o.request_id == "x":
                    got.extend(o.new_token_ids)
                if o.finished:
                    finished[o.request_id] = o.finish_reason
                elif o.request_id == "y":
                    finished.setdefault("y_started", True)
        assert got == want.outputs[0].token_ids and finished["x"] == "length"
        eng.abort("y")
        for _ in range(1000):
            if "y" in finished:
                break
            ready, _, _ = select.select([eng.output_fd()], [], [], 30)
            assert ready, "no output within 30 s"
            for o in eng.drain_outputs():
                if o.finished:
                    finished[o.request_id] = o.finish_reason
        # Normally aborted; it may have reached max_model_len first (no timing is assumed).
        assert finished["y"] in ("abort", "length")
    finally:
        eng.stop_loop()
    assert not eng.has_unfinished_requests()
    # Back in step mode.
    (again,) = llm.generate({"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert again.outputs[0].token_ids == want.outputs[0].token_ids


def _run(eng, rid, prompt, params, salt=""):
    eng.add_request(rid, prompt, params, 0, salt)
    cached = None
    while eng.has_unfinished_requests():
        for o in eng.step():
            cached = o.num_cached_tokens
    return cached


def test_cache_salt_separates_prefix_caches(built):
    llm = make_llm(built.path, block_size=4)
    p = _core.SamplingParams()
    p.max_tokens = 2
    p.ignore_eos = True
    prompt = list(range(10, 30))
    got = [_run(llm.engine, rid, prompt, p, salt) for rid, salt in
           [("a", ""), ("b", "s1"), ("c", "s1"), ("d", "s2"), ("e", "")]]
    assert got == [0, 0, 16, 0, 16]


def test_reset_prefix_cache_refused_while_running(built):
    llm = make_llm(built.path, block_size=4)
    p = _core.SamplingParams()
    p.max_tokens = 3
    eng = llm.engine
    _run(eng, "a", list(range(10, 30)), p)
    eng.add_request("b", list(range(40, 50)), p)
    eng.step()
    assert eng.reset_prefix_cache() is False
    while eng.has_unfinished_requests():
        eng.step()
    assert eng.reset_prefix_cache() is True
    assert _run(eng, "c", list(range(10, 30)), p) == 0


def test_prompt_larger_than_the_cache(built):
    llm = make_llm(built.path, num_gpu_blocks_override=4, block_size=4)
    with pytest.raises(ValueError, match="KV blocks"):
        llm.generate({"prompt_token_ids": list(range(16))}, SamplingParams(max_tokens=1))
    (out,) = llm.generate({"prompt_token_ids": list(range(10))}, SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out.outputs[0].token_ids) == 3


def test_priority_preemption_of_a_scheduled_chunk_keeps_outputs_right(built):
    from cserve.outputs import CompletionOutput, Logprob
    from tests.helpers.models import check_greedy

    llm = make_llm(built.path, scheduling_policy="priority", max_num_batched_tokens=16,
                   long_prefill_token_threshold=8, block_size=4, num_gpu_blocks_override=7)
    eng = llm.engine

    def sp(n):
        p = _core.SamplingParams()
        p.max_tokens = n
        p.ignore_eos = True
        p.temperature = 0.0
        p.logprobs = 0
        return p

    prompt = random_prompt(np.random.default_rng(0), 24, built.vocab_size)
    eng.add_request("A", prompt, sp(3), 10)
    toks, entries = [], []
    for i in range(50):
        if i == 1:
            eng.add_request("B", [5, 6, 7, 8], sp(2), 0)
        if not eng.has_unfinished_requests():
            break
        for o in eng.step():
            if o.request_id == "A":
                toks += o.new_token_ids
                entries += [{e.token_ids[0]: Logprob(e.logprobs[0])} for e in o.new_logprobs]
    assert eng.stats().num_preemptions == 1
    completion = CompletionOutput(index=0, text="", token_ids=toks, cumulative_logprob=None, logprobs=entries)
    check_greedy(completion, prompt, built.logprobs(prompt + toks))


def test_common_vllm_keywords_are_accepted_or_refused_clearly(tiny_model_dir):
    from cserve import LLM, SamplingParams

    llm = LLM(tiny_model_dir, dtype="float32", trust_remote_code=True, enforce_eager=True,
              tensor_parallel_size=1, device="cpu", disable_log_stats=True, quantization=None)
    out = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(temperature=0, max_tokens=2))
    assert len(out[0].outputs[0].token_ids) == 2
    with pytest.raises(NotImplementedError, match="data_parallel_size=2 is not supported yet"):
        LLM(tiny_model_dir, data_parallel_size=2)
    with pytest.raises(ValueError, match=r"model config \(none\) does not match .* argument \(awq\)"):
        LLM(tiny_model_dir, quantization="awq")
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        LLM(tiny_model_dir, no_such_option=1)


def test_llm_takes_a_hugging_face_repo_id(tiny_model_dir, tmp_path, monkeypatch):
    """LLM("org/name") loads the repo from the Hugging Face cache, as `cserve serve` does."""
    from pathlib import Path

    from tests.helpers.hub import hub_repo

    files = {p.name: p.read_bytes() for p in Path(tiny_model_dir).iterdir() if p.is_file()}
    hub_repo(tmp_path / "hub", "org/tiny", files)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    llm = LLM("org/tiny", download_dir=str(tmp_path / "hub"), dtype="float32", max_model_len=64, num_threads=1)
    out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=3, temperature=0),
                       use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 3
    with pytest.raises(FileNotFoundError, match="org/missing"):
        LLM("org/missing", download_dir=str(tmp_path / "hub"))
