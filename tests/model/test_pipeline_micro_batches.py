"""Pipeline micro-batches: a prefill step of several sequences is cut into groups of whole
sequences that flow through the stages (stage s computes group m + 1 while stage s + 1 computes
group m); the logits equal the whole model's."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cserve import _core


def test_split_keeps_sequences_whole_and_balances_tokens():
    # Sequences of 100, 20, 20, 60, 200 tokens; a logits row at each sequence's end, plus prompt
    # logprob rows inside the second one.
    starts = [0, 100, 120, 140, 200, 400]
    rows = [99, 100, 105, 119, 139, 199, 399]
    parts = _core.testing.split_micro_batches(starts, rows, 3)
    # Each group ends at the first sequence boundary at or past its share (133, 266 tokens).
    assert [p["first_token"] for p in parts] == [0, 140, 200]
    assert [p["query_start"] for p in parts] == [[0, 100, 120, 140], [0, 60], [0, 200]]
    assert [p["logits_rows"] for p in parts] == [[99, 100, 105, 119, 139], [59], [199]]
    assert [p["first_logit"] for p in parts] == [0, 5, 6]
    assert [p["block_tables"] for p in parts] == [[0, 1, 2], [3], [4]]
    assert sum((p["token_ids"] for p in parts), []) == list(range(400))
    # Never more groups than sequences; one group leaves the batch whole.
    assert len(_core.testing.split_micro_batches([0, 5, 9], [4, 8], 4)) == 2
    assert _core.testing.split_micro_batches(starts, rows, 1)[0]["query_start"] == starts


def _batch_logits(path: str, tp: int, pp: int, prompts: list, micro: int) -> tuple:
    group = f"cserve-test-mb-{os.getpid()}-{tp}-{pp}-{micro}"
    logits, count = _core.testing.pipeline_batch_logits(path, tp, pp, prompts, group, micro)
    return np.asarray(logits), count


@pytest.mark.parametrize("tp,pp,layers", [(1, 2, 2), (1, 3, 5), (2, 2, 2)], ids=["pp2", "pp3", "tp2-pp2"])
def test_micro_batched_stages_equal_the_whole_model(model_zoo, tp, pp, layers):
    built = (model_zoo.get("llama") if layers == 2 else
             model_zoo.custom("llama_5_layers", "llama", hidden_size=64, intermediate_size=96, num_attention_heads=4,
                              num_key_value_heads=2, num_hidden_layers=5, tie_word_embeddings=True))
    rng = np.random.default_rng(7)
    prompts = [[int(t) for t in rng.integers(3, built.vocab_size, size=n)] for n in (300, 150, 170, 200)]
    whole, _ = _batch_logits(built.path, 1, 1, prompts, 1)
    staged, count = _batch_logits(built.path, tp, pp, prompts, 4)
    assert count == 4  # 820 tokens over 4 sequences: four micro-batches
    np.testing.assert_allclose(staged, whole, atol=1e-4, rtol=0)
    unsplit, count = _batch_logits(built.path, tp, pp, prompts, 1)
    assert count == 1
    np.testing.assert_allclose(unsplit, whole, atol=1e-4, rtol=0)
