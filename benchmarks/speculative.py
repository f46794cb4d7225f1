"""Single-stream decode speed with and without n-gram speculative decoding, on a repetitive
workload (repeat and lightly edit a given text: the output copies the prompt) and a
non-repetitive one (free writing), with the acceptance counters vLLM reports.

    python benchmarks/speculative.py --model smollm2-gguf --max-tokens 128 \
        --speculative-config '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4}'

Prints one row per (workload, speculation): output tokens, seconds, tok/s, drafts, acceptance
rate, mean acceptance length (1 + accepted / drafts) and the speed-up over no speculation.
Each request runs --repeats times after one warm-up; the fastest run counts.
"""

from __future__ import annotations

import argparse
import json
import time

import bench_common

from cserve import LLM, SamplingParams

TEXT = ("The museum opens at nine in the morning and closes at six in the evening. Visitors may buy tickets "
        "at the front desk or online. Children under twelve enter for free, and students pay half price with "
        "a valid card. Large bags must be left in the lockers near the entrance. Photography without flash is "
        "allowed in most rooms, except in the special exhibition on the second floor. Guided tours start every "
        "hour from the main hall and last about forty minutes.")
WORKLOADS = {
    "repetitive (edit a given text)": f"Rewrite the following text exactly, but replace 'museum' with 'gallery':\n\n{TEXT}",
    "non-repetitive (free writing)": "Write a short story about a lighthouse keeper who finds a strange map.",
}


def run(llm: LLM, prompt: str, max_tokens: int, repeats: int) -> tuple[int, float]:
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    messages = [{"role": "user", "content": prompt}]
    llm.chat(messages, sp, use_tqdm=False)  # warm-up
    best = float("inf")
    n = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = llm.chat(messages, sp, use_tqdm=False)
        best = min(best, time.perf_counter() - t0)
        n = len(out[0].outputs[0].token_ids)
    return n, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-gguf")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--speculative-config", default=json.dumps(
        {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4}))
    args = ap.parse_args()
    model = bench_common.resolve_model(args.model)
    print(bench_common.machine_line())
    configs = {"off": None, "ngram": json.loads(args.speculative_config)}
    llms = {name: LLM(model, max_model_len=2048, speculative_config=cfg) for name, cfg in configs.items()}
    print(f"model {model}; speculative config {args.speculative_config}")
    print(f"{'workload':34} {'spec':6} {'tokens':>6} {'s':>7} {'tok/s':>7} {'drafts':>6} {'accept':>7} "
          f"{'mean len':>8} {'speed-up':>8}")
    for workload, prompt in WORKLOADS.items():
        base = None
        for name, llm in llms.items():
            before = llm.engine.stats()
            n, seconds = run(llm, prompt, args.max_tokens, args.repeats)
            after = llm.engine.stats()
            drafts = after.spec_decode_num_drafts - before.spec_decode_num_drafts
            drafted = after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens
            accepted = after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens
            rate = f"{100 * accepted / drafted:.1f}%" if drafted else "-"
            mean = f"{1 + accepted / drafts:.2f}" if drafts else "-"
            tps = n / seconds
            base = base or tps
            print(f"{workload:34} {name:6} {n:6d} {seconds:7.3f} {tps:7.1f} {drafts:6d} {rate:>7} {mean:>8} "
                  f"{tps / base:7.2f}x")


if __name__ == "__main__":
    main()
