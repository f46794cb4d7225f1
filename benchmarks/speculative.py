"""Decode speed with and without speculative decoding (n-gram or a draft model), one stream and
several at once, on a repetitive workload (repeat and lightly edit a given text: the output copies
the prompt) and a non-repetitive one (free writing), with the acceptance counters vLLM reports.

    python benchmarks/speculative.py --model smollm2-gguf --max-tokens 128 --streams 1 16 \
        --speculative-config '{"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4}'
    python benchmarks/speculative.py --model smollm2 --dtype bfloat16 --max-tokens 128 --streams 1 16 \
        --speculative-config '{"model": "smollm2-gguf", "num_speculative_tokens": 3}'

The config's draft "model" may be a path or one of the names --model takes (smollm2,
smollm2-gguf); --dtype is the target's (the draft computes in it too).

Three engines: no speculation ("off"), the config with every draft verified ("always":
auto_disable false, as vLLM) and the config as given ("auto": cserve's automatic rule unless the
config turns it off). Prints one row per (workload, streams, engine): output tokens, seconds,
tok/s, drafts, acceptance rate, mean acceptance length (1 + accepted / drafts) and the speed-up
over no speculation. With N streams, N requests (each its own variant of the workload) start
together; tok/s counts all their tokens. Each batch runs --repeats times after one warm-up;
the fastest run counts.
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
NAMES = ["gallery", "library", "theatre", "castle", "garden", "palace", "temple", "station", "school", "harbour",
         "market", "tower", "chapel", "studio", "arena", "hall"]
SUBJECTS = ["a lighthouse keeper who finds a strange map", "a baker who can hear bread rise", "two rival chess clocks",
            "a robot learning to whistle", "a city where it rains upwards", "the last bookshop on the moon",
            "a cat who runs a post office", "a violin that remembers its owners", "an island that moves at night",
            "a detective afraid of the dark", "a garden growing in a submarine", "a snowman in the desert",
            "a clockmaker who loses an hour", "a train that never stops", "a dragon who collects stamps",
            "a village of silent bells"]
WORKLOADS = {
    "repetitive (edit a given text)":
        lambda i: f"Rewrite the following text exactly, but replace 'museum' with '{NAMES[i % len(NAMES)]}':\n\n{TEXT}",
    "non-repetitive (free writing)": lambda i: f"Write a short story about {SUBJECTS[i % len(SUBJECTS)]}.",
}


def run(llm: LLM, workload, streams: int, max_tokens: int, repeats: int) -> tuple[int, float]:
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    conversations = [[{"role": "user", "content": workload(i)}] for i in range(streams)]
    llm.chat(conversations, sp, use_tqdm=False)  # warm-up
    best = float("inf")
    n = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = llm.chat(conversations, sp, use_tqdm=False)
        best = min(best, time.perf_counter() - t0)
        n = sum(len(o.outputs[0].token_ids) for o in out)
    return n, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-gguf")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", type=int, nargs="+", default=[1])
    ap.add_argument("--dtype", default="auto", help="the target's dtype (auto: float32 checkpoints in bfloat16)")
    ap.add_argument("--speculative-config", default=json.dumps(
        {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_min": 2, "prompt_lookup_max": 4}))
    args = ap.parse_args()
    model = bench_common.resolve_model(args.model)
    print(bench_common.machine_line())
    spec = json.loads(args.speculative_config)
    if spec.get("model") not in (None, "ngram", "[ngram]"):
        spec["model"] = bench_common.resolve_model(spec["model"])
    configs = {"off": None, "always": {**spec, "auto_disable": False}, "auto": spec}
    llms = {name: LLM(model, dtype=args.dtype, max_model_len=2048, max_num_seqs=max(16, *args.streams),
                      speculative_config=cfg)
            for name, cfg in configs.items()}
    print(f"model {model} ({llms['off'].engine.model_info().dtype}); speculative config {json.dumps(spec)}")
    print(f"{'workload':34} {'streams':>7} {'spec':6} {'tokens':>6} {'s':>7} {'tok/s':>7} {'drafts':>6} "
          f"{'accept':>7} {'mean len':>8} {'speed-up':>8}")
    for (workload, prompt), streams in ((w, s) for w in WORKLOADS.items() for s in args.streams):
        base = None
        for name, llm in llms.items():
            before = llm.engine.stats()
            n, seconds = run(llm, prompt, streams, args.max_tokens, args.repeats)
            after = llm.engine.stats()
            drafts = after.spec_decode_num_drafts - before.spec_decode_num_drafts
            drafted = after.spec_decode_num_draft_tokens - before.spec_decode_num_draft_tokens
            accepted = after.spec_decode_num_accepted_tokens - before.spec_decode_num_accepted_tokens
            rate = f"{100 * accepted / drafted:.1f}%" if drafted else "-"
            mean = f"{1 + accepted / drafts:.2f}" if drafts else "-"
            tps = n / seconds
            base = base or tps
            print(f"{workload:34} {streams:7d} {name:6} {n:6d} {seconds:7.3f} {tps:7.1f} {drafts:6d} {rate:>7} "
                  f"{mean:>8} {tps / base:7.2f}x")


if __name__ == "__main__":
    main()
