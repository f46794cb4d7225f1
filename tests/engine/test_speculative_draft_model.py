"""Speculative decoding with a draft model (vLLM's "draft_model" method): the config's keys and
refusals, greedy output identical to no speculation with a random 1-layer draft and with the
target as its own draft (every draft then accepted), under batching, chunked prefill and prefix
caching; drafts in their own weight formats (GGUF, AWQ, online fp8); the draft's weights and KV
cache inside the memory the settings allow."""

from __future__ import annotations

import numpy as np
import pytest

from cserve import SamplingParams, _core
from cserve.cli.speculative_config import speculative_fields
from tests.helpers import quant_formats as qf
from tests.helpers.gguf_files import write_llama_gguf
from tests.helpers.models import SPECS, make_llm, random_prompt, with_config
from tests.helpers.speculation import prompts_with_shared_prefix, run, spec_counts

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
    return prompts_with_shared_prefix(target.vocab_size)


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
    # vLLM's draft keys: quantization (unset: the checkpoint's own), draft_tensor_parallel_size 1.
    assert fields["speculative_quantization"] == ""
    assert speculative_fields({"model": "/d", "num_speculative_tokens": 2, "quantization": "awq",
                               "draft_tensor_parallel_size": 1})["speculative_quantization"] == "awq"
    with pytest.raises(NotImplementedError, match="draft_tensor_parallel_size=2"):
        speculative_fields({"model": "/d", "num_speculative_tokens": 2, "draft_tensor_parallel_size": 2})
    with pytest.raises(ValueError, match="quantization must be a method name"):
        speculative_fields({"model": "/d", "num_speculative_tokens": 2, "quantization": 4})
    # Keys of the draft model only: the ngram method ignores them, as vLLM does.
    assert "speculative_quantization" not in speculative_fields({"method": "ngram", "num_speculative_tokens": 2,
                                                                 "quantization": "awq"})


def test_refusals(target, draft, model_zoo, tmp_path):
    other_vocab = with_config(draft, tmp_path / "vocab", vocab_size=300)
    with pytest.raises(ValueError, match="vocabulary of 300 tokens, the target model 256"):
        make_llm(target.path, speculative_config=draft_config(other_vocab))
    other_vocab_gguf = tmp_path / "vocab.gguf"
    spec = dict(SPECS["llama"], num_hidden_layers=1, vocab_size=300)
    model_type = spec.pop("model_type")
    write_llama_gguf(model_zoo.custom("llama_vocab300", model_type, **spec).model, other_vocab_gguf)
    with pytest.raises(ValueError, match="vocabulary of 300 tokens, the target model 256"):
        make_llm(target.path, speculative_config=draft_config(str(other_vocab_gguf)))
    # The draft's quantization is checked against its checkpoint as --quantization is the target's.
    with pytest.raises(ValueError, match=r"the draft model: Quantization method specified in the model config "
                                         r"\(none\) does not match .* \(awq\)"):
        make_llm(target.path, speculative_config=draft_config(draft.path, quantization="awq"))
    with pytest.raises(ValueError, match="the draft model: Unknown quantization method: q9"):
        make_llm(target.path, speculative_config=draft_config(draft.path, quantization="q9"))
    with pytest.raises(NotImplementedError, match="the draft model: quantization method 'bitsandbytes' is not "
                                                  "supported"):
        make_llm(target.path, speculative_config=draft_config(draft.path, quantization="bitsandbytes"))


@pytest.fixture(scope="module")
def target_q8_gguf(target, tmp_path_factory):
    """The target itself, quantized to Q8_0 in a GGUF file: the same model, quantized harder."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "target-q8_0.gguf"
    write_llama_gguf(target.model, path, gguf.GGMLQuantizationType.Q8_0)
    return str(path)


@pytest.mark.parametrize("quantization", [None, "gguf"])
def test_gguf_draft_keeps_greedy_output(target, target_q8_gguf, prompts, quantization):
    want = run(make_llm(target.path), prompts)
    extra = {"quantization": quantization} if quantization else {}
    spec = make_llm(target.path, speculative_config=draft_config(target_q8_gguf, **extra))
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    # The target quantized to 8 bits proposes mostly the target's own choices.
    assert drafted > 0 and accepted > 0.5 * drafted


def test_q4_gguf_draft_with_chunked_prefill_and_prefix_caching(target, prompts, tmp_path):
    import gguf

    path = tmp_path / "target-q4_1.gguf"
    write_llama_gguf(target.model, path, gguf.GGMLQuantizationType.Q4_1)
    options = dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=16, block_size=16)
    want = run(make_llm(target.path, **options), prompts)
    spec = make_llm(target.path, speculative_config=draft_config(str(path)), **options)
    assert run(spec, prompts) == want
    assert run(spec, prompts) == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted > 0 and spec.engine.stats().prefix_cache_hits > 0


def _awq_copy(built, path) -> str:
    """built's checkpoint with every linear layer of its decoder in AWQ 4-bit (group 32)."""
    state = {k: v.detach().numpy().copy() for k, v in built.model.state_dict().items()}
    for layer in range(built.config["num_hidden_layers"]):
        for lin in qf.LINEARS:
            name = f"model.layers.{layer}.{lin}"
            q = qf.quantize_int(state.pop(name + ".weight"), 32)
            for suffix, value in qf.awq_tensors(q).items():
                state[f"{name}.{suffix}"] = value
    qc = {"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"}
    return qf.write_checkpoint(path, built.config, state, qc)


def test_quantized_safetensors_drafts_keep_greedy_output(target, prompts, tmp_path):
    want = run(make_llm(target.path), prompts)
    awq = _awq_copy(target, tmp_path / "awq")
    float_bytes = _core.testing.load_model(target.path)
    assert _core.testing.load_model(awq) < 0.7 * float_bytes  # the draft's weights stay 4-bit
    # An AWQ checkpoint (its quantization_config; "awq" named or not), and vLLM's online fp8 of a
    # float checkpoint.
    for config in (draft_config(awq), draft_config(awq, quantization="awq"),
                   draft_config(target.path, quantization="fp8")):
        spec = make_llm(target.path, speculative_config=config)
        assert run(spec, prompts) == want
        drafted, accepted = spec_counts(spec)
        # 4-bit weights of this tiny random model keep about half of its choices (a wrong read: ~0).
        assert drafted > 0 and accepted > 0.3 * drafted, config


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


def test_draft_weights_and_cache_are_counted(target, draft, prompts):
    """kv_cache_memory_bytes bounds the target's and the draft's caches together: each block costs
    both models' bytes and the draft's scratch blocks (its proposals' keys) come out of the budget."""
    budget = 3 << 20
    options = dict(kv_cache_memory_bytes=budget, block_size=16, max_num_seqs=8)
    plain = make_llm(target.path, **options).engine.model_info()
    spec_llm = make_llm(target.path, speculative_config=draft_config(draft.path), **options)
    spec = spec_llm.engine.model_info()
    target_block = plain.kv_cache_bytes // plain.num_kv_blocks
    draft_block = target_block * draft.config["num_hidden_layers"] // target.config["num_hidden_layers"]
    scratch = spec.max_num_seqs * ((K + 15) // 16 + 1)
    assert spec.num_kv_blocks == (budget - scratch * draft_block) // (target_block + draft_block)
    assert spec.kv_cache_bytes == spec.num_kv_blocks * (target_block + draft_block) + scratch * draft_block
    assert spec.kv_cache_bytes <= budget < spec.kv_cache_bytes + target_block + draft_block
    assert spec.num_kv_blocks < plain.num_kv_blocks
    # With no size set, the CPU cache holds max_num_seqs full-length sequences in both caches, the
    # draft's scratch blocks besides.
    capped = dict(block_size=16, max_num_seqs=8)
    plain_capped = make_llm(target.path, **capped).engine.model_info()
    spec_capped = make_llm(target.path, speculative_config=draft_config(draft.path), **capped).engine.model_info()
    assert spec_capped.num_kv_blocks == plain_capped.num_kv_blocks == 8 * 256 // 16
    draft_bytes = (spec_capped.num_kv_blocks + scratch) * draft_block
    assert spec_capped.kv_cache_bytes == plain_capped.kv_cache_bytes + draft_bytes
    # The weights the engine reports are both models'.
    assert spec.weight_bytes == plain.weight_bytes + _core.testing.load_model(draft.path)
    assert run(spec_llm, prompts) == run(make_llm(target.path, **options), prompts)


def test_disable_by_batch_size(target, draft, prompts):
    # More requests than disable_by_batch_size: no drafts (none proposed, none verified); one
    # request alone still speculates. Greedy output unchanged either way.
    spec = make_llm(target.path, speculative_config=draft_config(draft.path, disable_by_batch_size=2))
    assert run(spec, prompts) == run(make_llm(target.path), prompts)
    assert spec_counts(spec)[0] == 0
    assert run(spec, prompts[:1]) == run(make_llm(target.path), prompts[:1])
    assert spec_counts(spec)[0] > 0


def test_draft_catches_up_after_speculation_was_off(target, prompts):
    # Three requests run (more than disable_by_batch_size): no proposals, and the lazy draft
    # computes nothing. Once the two short ones end, the long one proposes again: the draft first
    # catches up over every position it missed, and the target as its own draft then has every
    # draft accepted, which it could not with a wrong key or value anywhere in its cache.
    inputs = [{"prompt_token_ids": p} for p in prompts[:3]]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in (48, 10, 12)]
    plain = make_llm(target.path, block_size=8)
    want = [list(o.outputs[0].token_ids) for o in plain.generate(inputs, params, use_tqdm=False)]
    spec = make_llm(target.path, block_size=8,
                    speculative_config=draft_config(target.path, disable_by_batch_size=2))
    got = [list(o.outputs[0].token_ids) for o in spec.generate(inputs, params, use_tqdm=False)]
    assert got == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted  # proposed only once the long request ran alone


def test_prefix_cache_hit_proposes_from_its_own_catch_up(target, prompts):
    # The second request finds the first one's prompt blocks in the prefix cache: the draft never
    # saw it compute them and catches up over them (rewriting the shared blocks with the same
    # keys), so the target as its own draft still has every draft accepted.
    options = dict(enable_prefix_caching=True, block_size=16)
    rng = np.random.default_rng(5)
    shared = prompts[0][:40]
    first, second = shared + random_prompt(rng, 5, target.vocab_size), shared + random_prompt(rng, 7, target.vocab_size)
    want = run(make_llm(target.path, **options), [first]) + run(make_llm(target.path, **options), [second])
    spec = make_llm(target.path, speculative_config=draft_config(target.path), **options)
    assert run(spec, [first]) + run(spec, [second]) == want
    assert spec.engine.stats().prefix_cache_hits > 0
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted


def test_preemption_then_resume_without_prefix_caching(target, prompts):
    # Preempted requests lose their blocks; resumed, they are recomputed into other blocks (no
    # prefix cache to find the old ones): the draft starts over for them and still proposes what
    # the target would, every draft accepted.
    options = dict(max_num_batched_tokens=32, block_size=8, num_gpu_blocks_override=18, enable_prefix_caching=False)
    want = run(make_llm(target.path, **options), prompts, max_tokens=40)
    spec = make_llm(target.path, speculative_config=draft_config(target.path), **options)
    assert run(spec, prompts, max_tokens=40) == want
    stats = spec.engine.stats()
    assert stats.num_preemptions > 0 and stats.num_free_blocks == 18
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted


def test_smollm2_as_its_own_draft_catches_up_after_speculation_was_off(smollm2_model_dir):
    # The same with real weights (a tiny random model hardly reads its context; SmolLM2's drafts
    # go wrong at once without the keys of the positions before): while three requests run, no
    # proposals; alone, the long one catches up over its prompt and the tokens it sampled since.
    path = str(smollm2_model_dir)
    rng = np.random.default_rng(3)
    inputs = [{"prompt_token_ids": [1] + [int(t) for t in rng.integers(100, 20000, n)]} for n in (5, 12, 30)]
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in (40, 8, 10)]
    options = dict(block_size=8, max_model_len=512)
    want = [list(o.outputs[0].token_ids) for o in make_llm(path, **options).generate(inputs, params, use_tqdm=False)]
    spec = make_llm(path, **options, speculative_config=draft_config(path, disable_by_batch_size=2))
    assert [list(o.outputs[0].token_ids) for o in spec.generate(inputs, params, use_tqdm=False)] == want
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted


def test_smollm2_as_its_own_draft_after_prefix_cache_hits_and_preemption(smollm2_model_dir):
    # Real weights again: the second round's prompts hit the blocks the first one cached (the
    # draft catches up over them), and a cache of 16 blocks of 8 tokens preempts requests (the
    # draft starts over for them); every draft is still accepted.
    path = str(smollm2_model_dir)
    rng = np.random.default_rng(4)
    shared = [1] + [int(t) for t in rng.integers(100, 20000, 23)]
    inputs = [{"prompt_token_ids": shared + [int(t) for t in rng.integers(100, 20000, n)]} for n in (3, 9, 14)]
    sp = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    options = dict(block_size=8, max_model_len=512, enable_prefix_caching=True, num_gpu_blocks_override=16,
                   max_num_batched_tokens=32)
    want = [list(o.outputs[0].token_ids) for o in make_llm(path, **options).generate(inputs, sp, use_tqdm=False)]
    spec = make_llm(path, **options, speculative_config=draft_config(path))
    for _ in range(2):
        assert [list(o.outputs[0].token_ids) for o in spec.generate(inputs, sp, use_tqdm=False)] == want
    stats = spec.engine.stats()
    assert stats.prefix_cache_hits > 0 and stats.num_preemptions > 0
    drafted, accepted = spec_counts(spec)
    assert drafted > 0 and accepted == drafted
