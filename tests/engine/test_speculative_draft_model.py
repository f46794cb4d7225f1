"""Speculative decoding with a draft model (vLLM's "draft_model" method): the config's keys and
refusals, greedy output identical to no speculation with a random 1-layer draft and with the
target as its own draft (every draft then accepted), under batching, chunked prefill and prefix
caching."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import SamplingParams
from cserve.cli.speculative_config import speculative_fields
from tests.helpers.models import SPECS, make_llm, random_prompt, with_config

K = 3


def draft_config(path: str, **extra) -> dict:
    # auto_disable off: every draft is verified, so each step exercises the draft's cache.
    return {"model": path, "num_speculative_tokens": K, "auto_disable": False, **extra}


@pytest.fixture(scope="module")
def target(model_zoo):
    return model_zoo.get("llama")


@pytest.fixture(scope="module")
def draft(model_zoo):
    """The target's shapes and vocabulary, one layer, other random weights."""
    spec = dict(SPECS["llama"])
    model_type = spec.pop("model_type")
    spec["num_hidden_layers"] = 1
    return model_zoo.custom("llama_draft", model_type, **spec)


@pytest.fixture(scope="module")
def prompts(target):
    rng = np.random.default_rng(11)
    shared = random_prompt(rng, 40, target.vocab_size)
    return [shared + random_prompt(rng, n, target.vocab_size) for n in (3, 17, 30)] + \
        [random_prompt(rng, 9, target.vocab_size)]


def run(llm, prompts, max_tokens=24):
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def spec_counts(llm) -> tuple[int, int]:
    s = llm.engine.stats()
    return s.spec_decode_num_draft_tokens, s.spec_decode_num_accepted_tokens


def test_config_keys():
    fields = speculative_fields({"model": "/d", "num_speculative_tokens": 2})  # method inferred, as vLLM
    assert fields["speculative_method"] == "draft_model" and fields["speculative_model"] == "/d"
    assert fields["num_speculative_tokens"] == 2
    assert speculative_fields({"method": "draft_model", "model": "/d", "num_speculative_tokens": 2}) == fields
    with pytest.raises(ValueError, match="needs a draft model path"):
        speculative_fields({"method": "draft_model", "num_speculative_tokens": 2})
    with pytest.raises(ValueError, match="num_speculative_tokens must be provided with the draft_model method"):
        speculative_fields({"model": "/d"})
    with pytest.raises(ValueError, match="prompt_lookup_min applies to the ngram method"):
        speculative_fields({"model": "/d", "num_speculative_tokens": 2, "prompt_lookup_min": 2})


def test_refusals(target, draft, tmp_path):
    other_vocab = with_config(draft, tmp_path / "vocab", vocab_size=300)
    with pytest.raises(ValueError, match="vocabulary of 300 tokens, the target model 256"):
        make_llm(target.path, speculative_config=draft_config(other_vocab))
    with pytest.raises(NotImplementedError, match="a GGUF draft model"):
        make_llm(target.path, speculative_config=draft_config(str(tmp_path / "draft.gguf")))


def test_target_as_its_own_draft_accepts_every_draft(target, prompts):
    want = run(make_llm(target.path), prompts)
    spec = make_llm(target.path, speculative_config=draft_config(target.path))
    assert spec.engine.model_info().speculative_method == "draft_model"
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted


def test_random_draft_keeps_greedy_output(target, draft, prompts):
    want = run(make_llm(target.path), prompts)
    spec = make_llm(target.path, speculative_config=draft_config(draft.path))
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted < drafted  # another model: some drafts rejected, rolled back


@pytest.mark.parametrize("draft_name", ["target", "draft"])
def test_chunked_prefill_and_prefix_caching(target, draft, prompts, draft_name):
    path = target.path if draft_name == "target" else draft.path
    options = dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=16,
                   block_size=16)
    want = run(make_llm(target.path, **options), prompts)
    spec = make_llm(target.path, speculative_config=draft_config(path), **options)
    # Twice: the second round's prompts hit the cache the first one filled (draft's cache too).
    assert run(spec, prompts) == want
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and spec.engine.stats().prefix_cache_hits > 0
    if draft_name == "target":
        assert accepted == drafted


@pytest.mark.parametrize("draft_name", ["target", "draft"])
def test_preemption_and_small_blocks(target, draft, prompts, draft_name):
    path = target.path if draft_name == "target" else draft.path
    # Blocks of 8 tokens (a proposal crosses block ends) and a cache small enough to preempt.
    options = dict(max_num_batched_tokens=32, block_size=8, num_gpu_blocks_override=18, enable_prefix_caching=True)
    want = run(make_llm(target.path, **options), prompts, max_tokens=40)
    spec = make_llm(target.path, speculative_config=draft_config(path), **options)
    assert run(spec, prompts, max_tokens=40) == want
    stats = spec.engine.stats()
    assert stats.num_preemptions > 0 and stats.num_free_blocks == 18
    drafted, accepted = spec_counts(spec)
    assert drafted > 0
    if draft_name == "target":
        assert accepted == drafted


def test_seeded_sampling_with_forks_is_unchanged(target, draft, prompts):
    # Greedy drafts are certain, so verification is exact rejection sampling, and on the CPU the
    # request's generator draws once per output token: seeded output is the same token for token.
    # n=2 forks the request (its blocks copied in both caches).
    sp = SamplingParams(temperature=0.8, top_p=0.95, seed=5, n=2, max_tokens=24, ignore_eos=True)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    want = [[list(c.token_ids) for c in o.outputs] for o in make_llm(target.path).generate(inputs, sp, use_tqdm=False)]
    spec = make_llm(target.path, speculative_config=draft_config(target.path))
    got = [[list(c.token_ids) for c in o.outputs] for o in spec.generate(inputs, sp, use_tqdm=False)]
    assert got == want
    drafted, accepted = spec_counts(spec)
    assert 0 < accepted < drafted  # sampled: the target's own greedy drafts are not always drawn


def test_forks_copy_the_draft_cache(target, prompts):
    # n=2 forks each request after its prompt: the partial blocks copied in the target's cache are
    # copied in the draft's too, so the target as its own draft still has every draft accepted.
    sp = SamplingParams(temperature=0.0, n=2, max_tokens=24, ignore_eos=True)
    spec = make_llm(target.path, speculative_config=draft_config(target.path))
    outs = spec.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    assert [list(c.token_ids) for o in outs for c in o.outputs][::2] == run(make_llm(target.path), prompts)
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted


def test_with_graph_padding(target, prompts, monkeypatch):
    # Graphs (the CPU's emulation) keep a spare block for padding after the target's blocks: the
    # draft's scratch blocks come after it, and the draft follows the unpadded batch.
    monkeypatch.setenv("CSERVE_CPU_EMULATE_GRAPHS", "1")
    want = run(make_llm(target.path, device="cpu"), prompts)
    spec = make_llm(target.path, device="cpu", speculative_config=draft_config(target.path))
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted
