"""What the speculative-decoding tests share: prompts with a common prefix, greedy runs, counts."""

from __future__ import annotations

import numpy as np

from cserve import SamplingParams
from tests.helpers.models import random_prompt


def prompts_with_shared_prefix(vocab_size: int) -> list[list[int]]:
    """Three prompts behind one 40-token prefix (prefix-cache hits) and one of their own."""
    rng = np.random.default_rng(11)
    shared = random_prompt(rng, 40, vocab_size)
    return [shared + random_prompt(rng, n, vocab_size) for n in (3, 17, 30)] + [random_prompt(rng, 9, vocab_size)]


def run(llm, prompts, max_tokens=24) -> list[list[int]]:
    """Each prompt's greedy output tokens."""
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def spec_counts(llm) -> tuple[int, int]:
    """Draft tokens proposed and accepted so far."""
    s = llm.engine.stats()
    return s.spec_decode_num_draft_tokens, s.spec_decode_num_accepted_tokens
