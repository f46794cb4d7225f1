"""Pipeline parallelism's micro-batches on this machine: prefill throughput (prompt tokens/s) of
16 prompts in one step, and decode ms/token with 16 streams, for -pp 1, -pp 2 stage by stage
(--pipeline-micro-batches 1) and -pp 2 with micro-batches (the default: twice the stages), each
rank on its own cores. Stage by stage, -pp 2 runs each step on one stage at a time; with
micro-batches the stages overlap on prefill steps.

    python benchmarks/pipeline_parallel.py [--dummy-llama 1024,12,16,8,2816] [--prompt-len 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tensor_parallel import dummy_llama  # noqa: E402


def measure(model: str, pp: int, micro: int, prompt_len: int, runs: int) -> tuple[float, float]:
    from cserve import _core
    from cserve.engine.tensor_parallel import start_engine

    config = _core.EngineConfig()
    config.model = model
    config.load_format = "dummy"
    config.dtype = "bfloat16"
    config.max_model_len = 1024
    config.max_num_batched_tokens = 16 * prompt_len
    config.max_num_seqs = 16
    config.kv_cache_memory_bytes = 1 << 29
    config.enable_prefix_caching = False
    config.pipeline_parallel_size = pp
    config.pipeline_micro_batches = micro
    engine, ranks = start_engine(config)
    try:
        def run(tag: str, max_tokens: int) -> float:
            p = _core.SamplingParams()
            p.temperature = 0
            p.max_tokens = max_tokens
            p.ignore_eos = True
            for i in range(16):
                engine.add_request(f"{tag}-{i}", [(7 * i + 13 * t) % 31000 + 5 for t in range(prompt_len)], p)
            t0 = time.perf_counter()
            while engine.has_unfinished_requests():
                engine.step()
            return time.perf_counter() - t0

        run("warm", 2)
        prefill = statistics.median(16 * prompt_len / run(f"p{r}", 1) for r in range(runs))
        decode_steps = 32
        decode = statistics.median((run(f"d{r}", decode_steps + 1) - run(f"e{r}", 1)) / decode_steps * 1000
                                   for r in range(runs))
        return prefill, decode
    finally:
        engine.shutdown()
        if ranks is not None:
            ranks.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dummy-llama", default="1024,12,16,8,2816", help="hidden,layers,heads,kv_heads,intermediate")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    model = dummy_llama(a.dummy_llama)
    print(f"dummy Llama {a.dummy_llama} (bf16), 16 prompts of {a.prompt_len} tokens")
    print("| layout | prefill prompt tok/s | decode ms/step, 16 streams |")
    print("|---|---|---|")
    for label, pp, micro in (("-pp 1", 1, 0), ("-pp 2, stage by stage", 2, 1), ("-pp 2, micro-batches", 2, 0)):
        prefill, decode = measure(model, pp, micro, a.prompt_len, a.runs)
        print(f"| {label} | {prefill:.0f} | {decode:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
