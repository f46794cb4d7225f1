"""The prompts of `cserve bench serve`, sampled as vLLM's benchmark datasets sample them.

- random: token ids drawn from the vocabulary (special tokens left out), decoded to text and
  re-encoded until the text is exactly the wanted number of tokens (vLLM's
  gen_prompt_decode_to_target_len); lengths uniform in [len * (1 - r), len * (1 + r)]; an
  optional shared random prefix of --random-prefix-len tokens.
- sharegpt: a local ShareGPT JSON file: the first turn is the prompt, the second's token count
  the output length (unless --sharegpt-output-len); pairs outside 4..1024 prompt tokens or over
  2048 in all are skipped, as vLLM does.
- custom: a JSONL file of {"prompt": ...} lines, rendered with the model's chat template
  unless --custom-skip-chat-template (or the backend is a chat endpoint, which renders it).
- prefix_repetition: --prefix-repetition-num-prefixes random prefixes, each shared by an equal
  share of the prompts, followed by a random suffix.

Prompts are text for every backend, so the same dataset drives any OpenAI-compatible server;
each request's input length is then the server's count (usage.prompt_tokens) when it sends one.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

DATASETS = ("random", "sharegpt", "custom", "prefix_repetition")


@dataclass
class SampleRequest:
    prompt: str
    prompt_len: int           # tokens by the benchmark's tokenizer
    expected_output_len: int  # sent as max_tokens


def _allowed_ids(tokenizer):
    import numpy as np

    special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    return np.array([i for i in range(tokenizer.get_vocab_size()) if i not in special])


def decode_to_length(tokenizer, ids: list[int], target: int, allowed, rng,
                     max_retry: int = 10) -> tuple[str, list[int]]:
    """Text whose tokens are `target` long: decode, re-encode, cut or pad with random ids, repeat
    (a run of ids need not survive a round trip through text). Returns (text, its token ids)."""
    for attempt in range(max_retry + 1):
        text = tokenizer.decode(ids)
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if len(ids) == target or attempt == max_retry:
            break
        if len(ids) < target:
            ids = ids + allowed[rng.integers(0, len(allowed), target - len(ids))].tolist()
        else:
            ids = ids[:target]
    return text, ids


def random_requests(tokenizer, num_requests: int, input_len: int, output_len: int, range_ratio: float = 0.0,
                    prefix_len: int = 0, seed: int = 0) -> list[SampleRequest]:
    import numpy as np

    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"--random-range-ratio {range_ratio}: must be in [0, 1)")
    rng = np.random.default_rng(seed)
    allowed = _allowed_ids(tokenizer)
    real_input_len = max(0, input_len - tokenizer.num_special_tokens_to_add(False))
    prefix = allowed[rng.integers(0, len(allowed), prefix_len)].tolist()
    input_lens = rng.integers(int(real_input_len * (1 - range_ratio)), int(real_input_len * (1 + range_ratio)) + 1,
                              num_requests)
    output_lens = rng.integers(int(output_len * (1 - range_ratio)), int(output_len * (1 + range_ratio)) + 1,
                               num_requests)
    offsets = rng.integers(0, len(allowed), num_requests)
    requests = []
    for i in range(num_requests):
        # vLLM's sequence: consecutive allowed ids from a random offset, after the shared prefix
        inner = allowed[(offsets[i] + i + np.arange(input_lens[i])) % len(allowed)].tolist()
        text, ids = decode_to_length(tokenizer, prefix + inner, prefix_len + int(input_lens[i]), allowed, rng)
        requests.append(SampleRequest(text, len(ids), max(1, int(output_lens[i]))))
    return requests


def prefix_repetition_requests(tokenizer, num_requests: int, prefix_len: int, suffix_len: int, num_prefixes: int,
                               output_len: int, seed: int = 0) -> list[SampleRequest]:
    """Prompt i shares prefix i % num_prefixes; every prefix gets num_requests / num_prefixes
    prompts (one more for the first num_requests % num_prefixes); the order is shuffled."""
    import numpy as np

    if num_prefixes < 1 or num_requests < num_prefixes:
        raise ValueError(f"--num-prompts {num_requests} must be at least --prefix-repetition-num-prefixes "
                         f"{num_prefixes} (and that at least 1)")
    rng = np.random.default_rng(seed)
    allowed = _allowed_ids(tokenizer)

    def exact(n: int) -> list[int]:
        return decode_to_length(tokenizer, allowed[rng.integers(0, len(allowed), n)].tolist(), n, allowed, rng)[1]

    prefixes = [exact(prefix_len) for _ in range(num_prefixes)]
    requests = []
    for i in range(num_requests):
        ids = prefixes[i % num_prefixes] + exact(suffix_len)
        requests.append(SampleRequest(tokenizer.decode(ids), len(ids), output_len))
    random.Random(seed).shuffle(requests)
    return requests


def is_valid_pair(prompt_len: int, output_len: int, check_output: bool = True) -> bool:
    """vLLM's filter for ShareGPT pairs: 4..1024 prompt tokens, >= 4 output tokens, <= 2048 in all."""
    return (4 <= prompt_len <= 1024 and (not check_output or output_len >= 4)
            and prompt_len + output_len <= 2048)


def _oversample(requests: list[SampleRequest], num_requests: int, seed: int) -> list[SampleRequest]:
    """Fills up to num_requests by drawing again from what was sampled, as vLLM does."""
    if requests and len(requests) < num_requests:
        requests = requests + random.Random(seed).choices(requests, k=num_requests - len(requests))
    return requests


def _shuffled(items: list, seed: int, shuffle: bool) -> list:
    if shuffle:
        random.Random(seed).shuffle(items)
    return items


def sharegpt_requests(path: str, tokenizer, num_requests: int, output_len: Optional[int] = None, seed: int = 0,
                      shuffle: bool = True, oversample: bool = True) -> list[SampleRequest]:
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    entries = _shuffled([e for e in entries if len(e.get("conversations", [])) >= 2], seed, shuffle)
    requests = []
    for entry in entries:
        if len(requests) >= num_requests:
            break
        prompt, completion = entry["conversations"][0]["value"], entry["conversations"][1]["value"]
        prompt_len = len(tokenizer.encode(prompt).ids)
        out_len = output_len if output_len is not None else len(tokenizer.encode(completion).ids)
        if is_valid_pair(prompt_len, out_len, check_output=output_len is None):
            requests.append(SampleRequest(prompt, prompt_len, out_len))
    return _oversample(requests, num_requests, seed) if oversample else requests


def custom_requests(path: str, tokenizer, num_requests: int, output_len: int, render: Optional[Callable[[str], str]],
                    seed: int = 0, shuffle: bool = True, oversample: bool = True) -> list[SampleRequest]:
    """`render(prompt)` applies the chat template; None sends the prompts as they are."""
    if not str(path).endswith(".jsonl"):
        raise ValueError(f"--dataset-path {path}: the custom dataset is a .jsonl file")
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if any("prompt" not in row for row in rows):
        raise ValueError(f"{path}: every line needs a 'prompt' field")
    rows = _shuffled(rows, seed, shuffle)
    requests = []
    for row in rows[:num_requests if num_requests > 0 else len(rows)]:
        prompt = render(row["prompt"]) if render else row["prompt"]
        requests.append(SampleRequest(prompt, len(tokenizer.encode(prompt).ids), output_len))
    return _oversample(requests, num_requests, seed) if oversample else requests


def sample_requests(args, tokenizer, render: Optional[Callable[[str], str]] = None) -> list[SampleRequest]:
    """The requests `args` (the `cserve bench serve` flags) ask for."""
    name = args.dataset_name
    if name in ("sharegpt", "custom") and not args.dataset_path:
        raise ValueError(f"--dataset-name {name} needs --dataset-path")
    shuffle, oversample = not args.disable_shuffle, not args.no_oversample
    if name == "random":
        return random_requests(tokenizer, args.num_prompts, args.random_input_len, args.random_output_len,
                               args.random_range_ratio, args.random_prefix_len, args.seed)
    if name == "sharegpt":
        return sharegpt_requests(args.dataset_path, tokenizer, args.num_prompts, args.sharegpt_output_len, args.seed,
                                 shuffle, oversample)
    if name == "custom":
        return custom_requests(args.dataset_path, tokenizer, args.num_prompts, args.custom_output_len,
                               None if args.custom_skip_chat_template else render, args.seed, shuffle, oversample)
    if name == "prefix_repetition":
        return prefix_repetition_requests(tokenizer, args.num_prompts, args.prefix_repetition_prefix_len,
                                          args.prefix_repetition_suffix_len, args.prefix_repetition_num_prefixes,
                                          args.prefix_repetition_output_len, args.seed)
    raise ValueError(f"--dataset-name {name}: one of {', '.join(DATASETS)}")
